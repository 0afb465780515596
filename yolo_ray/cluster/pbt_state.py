"""PBT run state: the scheduler's resumable JSON, checkpoint discovery and the hyp schedule."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, StoreError
from ..evolve.files import SIDECAR_NAME, write_text_atomic
from ..evolve.records import Row, TrialRecord, format_row
from ..evolve.store import EvolutionStore
from ..train.results import RESULT_KEYS

STATE_NAME = "pbt_state.json"
SCHEDULE_NAME = "hyp_schedule.yaml"
CKPT_META = "meta.json"   # written by the PBT trainable into every checkpoint folder
STATE_VERSION = 1
LAG_ROUNDS = 1  # asynchronous PBT: a member starts round c once the slowest ended c - 1 - LAG
_LOG = logging.getLogger("yolo_ray")


@dataclass
class MemberPlan:
    """How one member starts a round: its genes and whose weights it continues from."""

    trial_id: str
    config: dict[str, float]          # the genes (hyps) it trains this round with
    source: int                       # member whose end-of-previous-round weights it loads
    cloned: bool = False              # source is another member (PBT exploit)
    parent_row: int | None = None     # evolve.csv row of the source at the previous round
    round: int | None = None          # the round it starts (asynchronous; None: PBTState.round)


@dataclass
class PBTState:
    """Everything Ray does not restore for PBT (ray notes §2.5), saved after every round.

    `round` is the round being trained; `members` says how each member starts it and
    `previous` how each started the round before (a fallback when the kill came before the
    last member's round-end checkpoint was written). Random draws need no saved position:
    the generator of member m at round r is always np.random.default_rng([seed, r, m]).
    Asynchronous rounds (`synchronous` False): each plan names its own round, and `round`
    is the slowest member's (set by `refresh_round` before the state is saved or read).
    """

    seed: int
    interval: int
    round: int = 0
    members: dict[int, MemberPlan] = field(default_factory=dict)
    previous: dict[int, MemberPlan] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)     # row trial id -> evolve.csv row
    perturbations: int = 0
    strategy: str = "pbt"
    synchronous: bool = True
    version: int = STATE_VERSION

    def refresh_round(self) -> None:
        """Asynchronous rounds: `round` becomes the slowest member's (O(members): called per
        save, not per row)."""
        if not self.synchronous:
            self.round = min((p.round or 0 for p in self.members.values()), default=0)

    def to_json(self) -> str:
        """Stable JSON text on one line (member keys as strings; `python -m json.tool` to read).

        The driver writes it every STATE_SAVE_S inside Tune's event loop, which stalls while
        it does: dataclasses.asdict (deep copies of every plan and row id) and an indented
        dump (pure-Python encoder) took 56 ms at 256 members x 20 rounds, now ~15 ms."""
        data = _field_values(self)
        for name in ("members", "previous"):
            data[name] = {str(k): _field_values(v) for k, v in data[name].items()}
        data["rng"] = "numpy.random.default_rng([seed, round, member])"
        return json.dumps(data, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> PBTState:
        """Parse `to_json` output; StoreError naming the file when it is not one."""
        try:
            data = json.loads(text)
            plans = {name: {int(k): MemberPlan(**v) for k, v in data[name].items()}
                     for name in ("members", "previous")}
            return cls(seed=int(data["seed"]), interval=int(data["interval"]),
                       round=int(data["round"]), members=plans["members"],
                       previous=plans["previous"],
                       rows={str(k): int(v) for k, v in data.get("rows", {}).items()},
                       perturbations=int(data.get("perturbations", 0)),
                       strategy=str(data.get("strategy", "pbt")),
                       synchronous=bool(data.get("synchronous", True)),
                       version=int(data.get("version", STATE_VERSION)))
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{source}: not a PBT state file ({type(e).__name__}: {e})") from None

    def save(self, path: Path) -> None:
        """Atomic rewrite (temp file + fsync + rename): a SIGKILL leaves old or new."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> PBTState:
        """Read a saved state."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise StoreError(f"{path}: cannot read: {e.strerror or e}") from None
        return cls.from_json(text, str(path))


def _field_values(obj: Any) -> dict[str, Any]:
    """A dataclass's fields by name, not copied (dataclasses.asdict deep-copies them)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def row_trial_id(tune_trial_id: str, member: int, round_index: int) -> str:
    """The store key of member `member`'s evaluation at round `round_index` (one row each)."""
    return f"{tune_trial_id}-m{member}-r{round_index}"


# ----------------------------------------------------------------------- run folder checks
def run_strategy(run_dir: Path) -> str | None:
    """The strategy a run folder was made by: pbt_state.json, else the sidecar's entries."""
    if (run_dir / STATE_NAME).is_file():
        return PBTState.load(run_dir / STATE_NAME).strategy
    side = run_dir / SIDECAR_NAME
    if not side.is_file():
        return None
    for line in side.read_text(encoding="utf-8").splitlines():
        try:
            strategy = json.loads(line).get("strategy")
        except (ValueError, AttributeError):
            continue
        if strategy not in (None, "seed", "unknown"):
            return str(strategy)
    return None


def check_resumable(run_dir: Path) -> None:
    """A --resume of a PBT run: the folder must exist and have been made by the PBT strategy.

    Raises:
        ConfigError: naming the folder and the strategy it was made with.
    """
    if not run_dir.is_dir():
        raise ConfigError(f"--resume: run folder {run_dir} does not exist")
    found = run_strategy(run_dir)
    if found is None and not (run_dir / STATE_NAME).is_file():
        raise ConfigError(f"--resume: {run_dir} holds no PBT run ({STATE_NAME} is missing); "
                          "start a new run without --resume")
    if found != "pbt":
        raise ConfigError(f"--resume: {run_dir} was made with --strategy {found}, not pbt; "
                          f"resume it with --strategy {found} or start a new run")


# ----------------------------------------------------------------------- checkpoints
def find_checkpoint(trial: Any, member: int, epoch: int) -> Any | None:
    """The newest checkpoint of `trial` holding member `member` after `epoch` epochs.

    Scans the trial's storage folder (any pyarrow filesystem) for checkpoint folders and reads
    their meta.json, so a checkpoint written after Ray's last experiment snapshot is found too.
    Returns a `_TrainingResult` ready for the trial's checkpoint manager, or None.
    """
    import pyarrow.fs as pafs  # type: ignore[import-untyped]
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    storage = trial.storage
    fs, root = storage.storage_filesystem, storage.trial_fs_path
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    folders = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                      and i.base_name.startswith("checkpoint_")), reverse=True)
    for folder in folders:
        meta = _read_meta(fs, f"{folder}/{CKPT_META}")
        if meta and int(meta.get("member", -1)) == member and int(meta.get("epoch", -1)) == epoch:
            metrics = {"epoch": epoch, "member": member,
                       "training_iteration": int(meta.get("training_iteration", epoch))}
            return _TrainingResult(checkpoint=Checkpoint(folder, fs), metrics=metrics)
    return None


def _read_meta(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        with fs.open_input_stream(path) as f:
            data = json.loads(f.readall().decode("utf-8"))
    except (OSError, ValueError):
        return None  # a folder still being uploaded, or not ours
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------- hyp schedule
def lineage(rows: Sequence[Row], last: int) -> list[Row]:
    """Rows from round 0 to `last`, following each row's parent (the weights it continued)."""
    chain: list[Row] = []
    seen: set[int] = set()
    i: int | None = last
    while i is not None and i not in seen and 0 <= i < len(rows):
        seen.add(i)
        chain.append(rows[i])
        parents = rows[i].meta.get("parent_rows") or []
        i = int(parents[0]) if parents else None
    return chain[::-1]


def best_final_row(rows: Sequence[Row]) -> Row | None:
    """The PBT result: the fittest member of the last round recorded (finite fitness)."""
    pbt = [r for r in rows if r.meta.get("strategy") == "pbt" and math.isfinite(r.fitness)]
    if not pbt:
        return None
    last = max(int(r.meta.get("generation") or 0) for r in pbt)
    final = [r for r in pbt if int(r.meta.get("generation") or 0) == last]
    return max(final, key=lambda r: (r.fitness, -r.index))


def hyp_schedule(rows: Sequence[Row], last: int, interval: int) -> list[dict[str, Any]]:
    """Per round, the hyps the best member's weights were trained with (pure)."""
    out = []
    for row in lineage(rows, last):
        r = int(row.meta.get("generation") or 0)
        out.append({"round": r, "epochs": [r * interval + 1, (r + 1) * interval],
                    "row": row.index, "trial": row.meta.get("trial_id"),
                    "cloned": bool(row.meta.get("cloned")), "fitness": round(row.fitness, 5),
                    "hyp": {k: float(v) for k, v in row.hyp.items()}})
    return out


def write_hyp_schedule(path: Path, rows: Sequence[Row], last: int, interval: int) -> Path:
    """hyp_schedule.yaml: a comment header, then one entry per round (atomic write)."""
    schedule = hyp_schedule(rows, last, interval)
    best = rows[last]
    header = [
        "# yolo-ray PBT hyperparameter schedule of the best final member",
        (f"# Best row: {last} (fitness {best.fitness:.5g}); {len(schedule)} rounds of "
         f"{interval} epoch(s)"),
        "# Each round lists the hyps used for its epochs; 'cloned' marks rounds that started",
        "# from another member's weights (the lineage follows the weights).",
    ]
    body = yaml.safe_dump({"interval": interval, "rounds": schedule}, sort_keys=False)
    write_text_atomic(path, "\n".join(header) + "\n" + body)
    return path


def round_checkpoints(round_index: int, interval: int, plans: Mapping[int, MemberPlan],
                      live: Mapping[int, Any], trials: Mapping[int, Any]
                      ) -> dict[int, Any] | None:
    """Each live member's starting checkpoint for round `round_index` (its plan's source at
    the round's first epoch; None for round 0), or None when any is missing."""
    if round_index < 0 or any(m not in plans for m in live):
        return None
    if round_index == 0:
        return {m: None for m in live}
    epoch = round_index * interval
    found = {m: find_checkpoint(trials[plans[m].source], plans[m].source, epoch)
             for m in live}
    return found if all(v is not None for v in found.values()) else None


def member_record(trial_id: str, config: Mapping[str, Any], genes: Sequence[str], member: int,
                  round_index: int, result: Mapping[str, Any], *, seed: int,
                  plan: MemberPlan | None) -> TrialRecord:
    """The evolve.csv row of `member` at the end of round `round_index`; `plan` is the
    member's plan for that round (its parent row and whether it cloned), None if unknown."""
    parent = plan.parent_row if plan is not None else None
    return TrialRecord(
        row_trial_id(trial_id, member, round_index), "finished",
        {k: float(config[k]) for k in genes}, [float(result[k]) for k in RESULT_KEYS],
        strategy="pbt", generation=round_index,
        parent_rows=() if parent is None else (parent,), seed=seed, node=result.get("node"),
        device=result.get("device"), start=result.get("round_start"),
        end=result.get("round_end"), cloned=bool(plan and plan.cloned))


def orphan_row(store: EvolutionStore, record: TrialRecord, taken: Collection[int]
               ) -> int | None:
    """The csv row a killed driver wrote for `record` without its sidecar entry, if any.

    The store appends the csv line first and the sidecar line second; a SIGKILL between the
    two leaves a row the store re-labels 'recovered' (trial id null). The resumed run then
    re-evaluates that (member, round): adopting the row instead of appending a twin keeps
    exactly one row per member and round. A match needs equal hyps as evolve.csv prints them.
    Costs O(recovered rows), not O(rows): it runs for every PBT row.
    """
    if record.trial_id in store.trial_rows([record.trial_id]):
        return None  # already recorded: the store's own idempotency answers
    want = format_row([record.hyp[k] for k in record.hyp])
    for row in store.recovered_rows():
        if row.index not in taken and format_row([row.hyp[k] for k in record.hyp]) == want:
            _LOG.warning(f"evolve.csv row {row.index} lost its sidecar entry when the driver "
                         f"died; it is the row of {record.trial_id}")
            return row.index
    return None


def record_round(store: EvolutionStore, state: PBTState, record: TrialRecord) -> int | None:
    """Write (or adopt the orphan of) a member's round row (`member_record`) and note it in
    `state.rows` under its row trial id; the row index, None when the store already had it."""
    row = orphan_row(store, record, state.rows.values())
    if row is None:
        row = store.append(record)
    if row is not None:
        state.rows[record.trial_id] = row
    return row


def resume_round(state: PBTState, interval: int, live: Mapping[int, Any],
                 trials: Mapping[int, Any], source: Any
                 ) -> tuple[int, Mapping[int, MemberPlan], dict[int, Any]]:
    """The round a restored run restarts (the saved one, else the one before when its
    starting checkpoints are missing), its member plans and each live member's checkpoint."""
    for round_index, plans in ((state.round, state.members),
                               (state.round - 1, state.previous)):
        found = round_checkpoints(round_index, interval, plans, live, trials)
        if found is not None:
            return round_index, plans, found
    raise ConfigError(f"{source}: cannot resume: the checkpoints of round {state.round} are "
                      "missing (deleted by num_to_keep?)")
