"""The audit trail: keyed input hashes and an append-only, chained log of inferences.

`input_hash` is HMAC-SHA256 of the input bytes under the audit key: a plain SHA-256 of a medical
image is a fingerprint anyone holding the image can confirm. Each audit row also carries
`prev_hash` and `row_hash` (HMAC of the row's content and `prev_hash`), so an edited, deleted or
reordered row breaks the chain and `verify_chain` names it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlmodel import Session, col, select

from schema.tables import AuditChainHead, PytorchInferenceLog

GENESIS_HASH = "0" * 64
VERIFY_PAGE_ROWS = 5000


def input_hash(key: bytes, data: bytes) -> str:
    """Hex HMAC-SHA256 of `data` under the audit key."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


# The columns a row hash covers: all of them but `row_hash` itself.
HASHED_COLUMNS = (
    "id",
    "job_id",
    "model_id",
    "user_id",
    "input_hash",
    "inference_time_ms",
    "confidence",
    "batch_size",
    "result",
    "created_at",
    "prev_hash",
)


def row_digest(key: bytes, row: Mapping[str, Any]) -> str:
    """The hash that chains a row to its predecessor: HMAC over its content and `prev_hash`."""
    content = {name: row[name] for name in HASHED_COLUMNS}
    content["created_at"] = row["created_at"].isoformat()
    # Hashed only when set, so rows written before the column existed keep their hashes.
    for optional in ("api_key_name", "variant"):
        if row.get(optional) is not None:
            content[optional] = row[optional]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def lock_chain(session: Session) -> AuditChainHead:
    """Take the chain lock for this transaction and return the head.

    The first statement of the transaction must be this write: on SQLite it takes the database
    write lock (waiting on the busy timeout) before anything is read, on PostgreSQL it locks the
    head row until commit.
    """
    session.execute(update(AuditChainHead).where(col(AuditChainHead.id) == 1).values(id=1))
    head = session.get(AuditChainHead, 1, populate_existing=True)
    if head is None:  # first append ever; migrations normally seed the row
        head = AuditChainHead(id=1)
        session.add(head)
        session.flush()
    return head


def append_rows(session: Session, key: bytes, head: AuditChainHead, rows: Sequence[dict[str, Any]]) -> None:
    """Chain `rows` (column → value, without id and hashes) after `head`, which the caller locked
    with `lock_chain`, and insert them in one executemany."""
    if not rows:
        return
    for row in rows:
        head.last_id += 1
        row["id"] = head.last_id
        row["prev_hash"] = head.last_hash
        row["row_hash"] = row_digest(key, row)
        head.last_hash = row["row_hash"]
    session.execute(insert(PytorchInferenceLog), list(rows))
    session.add(head)


@dataclass(frozen=True)
class ChainBreak:
    """The first row where the chain does not hold, and why."""

    row_id: int | None
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_chain` found."""

    rows_checked: int
    problem: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _rows_in_order(session: Session, after_id: int, up_to_id: int) -> Iterator[PytorchInferenceLog]:
    last_id = after_id
    while True:
        page = session.exec(
            select(PytorchInferenceLog)
            .where(col(PytorchInferenceLog.id) > last_id, col(PytorchInferenceLog.id) <= up_to_id)
            .order_by(col(PytorchInferenceLog.id))
            .limit(VERIFY_PAGE_ROWS)
        ).all()
        if not page:
            return
        yield from page
        last_id = page[-1].id or 0
        session.expunge_all()


def _read_head(session: Session) -> AuditChainHead:
    head = session.get(AuditChainHead, 1, populate_existing=True)
    return head if head is not None else AuditChainHead(id=1)


def verify_chain(session: Session, key: bytes) -> VerifyReport:
    """Walk the chain in id order; report the first edited, missing or reordered row.

    Safe while workers append: rows are checked up to the chain head read before them, and the
    walk goes on while the head moves. A row past a head that no longer moves is not in the chain.
    After a retention purge the walk starts at the anchor the purge recorded: the first remaining
    row must follow the last purged one, id and hash.
    """
    anchor = _read_head(session).pruned_through_id
    report = _walk(session, key)
    if not report.ok and _read_head(session).pruned_through_id != anchor:
        # A purge moved the anchor during the walk (rows vanished under it): walk again.
        report = _walk(session, key)
    return report


def anchor_mac(key: bytes, through_id: int, last_hash: str, through_at: datetime) -> str:
    """The HMAC that makes a purge anchor unforgeable without the audit key."""
    text = f"audit-anchor\x1f{through_id}\x1f{last_hash}\x1f{through_at.isoformat()}"
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _anchor_break(key: bytes, head: AuditChainHead) -> ChainBreak | None:
    """Why the purge anchor cannot be trusted, if it cannot: its HMAC is wrong, so it was not
    written by a purge holding the audit key (someone deleted rows and moved the anchor)."""
    if head.pruned_through_id == 0:
        return None
    at = head.pruned_through_at
    if at is None or head.pruned_mac is None:
        genuine = False
    else:
        expected = anchor_mac(key, head.pruned_through_id, head.pruned_last_hash, at)
        genuine = hmac.compare_digest(expected, head.pruned_mac)
    if genuine:
        return None
    return ChainBreak(head.pruned_through_id + 1, "the purge anchor is not genuine: rows before this one were deleted")


def _walk(session: Session, key: bytes) -> VerifyReport:
    head = _read_head(session)
    if (broken := _anchor_break(key, head)) is not None:
        return VerifyReport(0, broken)
    prev_hash, last_id, checked = head.pruned_last_hash, head.pruned_through_id, 0
    while True:
        for row in _rows_in_order(session, last_id, head.last_id):
            if row.id != last_id + 1:
                return VerifyReport(checked, ChainBreak(row.id, f"row {last_id + 1} is missing"))
            if row.prev_hash != prev_hash:
                return VerifyReport(checked, ChainBreak(row.id, "prev_hash does not match the row before"))
            if not hmac.compare_digest(row_digest(key, row.model_dump()), row.row_hash):
                return VerifyReport(checked, ChainBreak(row.id, "row content does not match its row_hash"))
            prev_hash, last_id, checked = row.row_hash, last_id + 1, checked + 1
        if (head.last_id, head.last_hash) != (last_id, prev_hash):
            return VerifyReport(checked, ChainBreak(head.last_id, f"rows after {last_id} are missing (chain head)"))
        beyond = session.exec(
            select(PytorchInferenceLog.id).where(col(PytorchInferenceLog.id) > last_id).limit(1)
        ).first()
        if beyond is None:
            return VerifyReport(checked, None)
        moved = _read_head(session)
        if moved.last_id == head.last_id:
            return VerifyReport(checked, ChainBreak(beyond, "row is past the chain head: not part of the chain"))
        head = moved
