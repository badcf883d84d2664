"""The workshops' record: a small database (SQLite by default; SQLAlchemy, so PostgreSQL works too).

The workshops service writes it; the spawner reads it to put a participant's course start into
the workshop's reservation. Passwords of walk-in participants are never stored here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Workshop(Base):
    __tablename__ = "workshops"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)  # short slug, e.g. dl-nov28
    title: Mapped[str] = mapped_column(String(120))
    course: Mapped[str] = mapped_column(String(48))
    owner: Mapped[str] = mapped_column(String(32))
    start: Mapped[datetime] = mapped_column(DateTime)
    end: Mapped[datetime] = mapped_column(DateTime)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    gpu_slices: Mapped[int] = mapped_column(Integer, default=0)
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_gb: Mapped[int] = mapped_column(Integer, default=1)
    reservation: Mapped[str] = mapped_column(String(40))
    group: Mapped[str] = mapped_column(String(48))
    state: Mapped[str] = mapped_column(String(16), default="scheduled")  # scheduled | ended
    created: Mapped[datetime] = mapped_column(DateTime, default=datetime.now)
    ended: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    walkins_removed: Mapped[bool] = mapped_column(Boolean, default=False)
    participants: Mapped[list[Participant]] = relationship(
        back_populates="workshop", cascade="all, delete-orphan", order_by="Participant.username")

    @property
    def walkins(self) -> list[str]:
        return [p.username for p in self.participants if p.walkin]

    @property
    def usernames(self) -> list[str]:
        return [p.username for p in self.participants]

    def is_open(self, now: datetime | None = None) -> bool:
        now = now or datetime.now()
        return self.state != "ended" and self.start <= now < self.end

    def as_dict(self) -> dict:
        return {
            "id": self.id, "name": self.name, "title": self.title, "course": self.course, "owner": self.owner,
            "start": self.start.isoformat(timespec="minutes"), "end": self.end.isoformat(timespec="minutes"),
            "gpus": self.gpus, "gpu_slices": self.gpu_slices, "cpus": self.cpus, "memory_gb": self.memory_gb,
            "reservation": self.reservation, "group": self.group, "state": self.state,
            "participants": self.usernames, "walkins": self.walkins,
        }


class Participant(Base):
    __tablename__ = "participants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workshop_id: Mapped[int] = mapped_column(ForeignKey("workshops.id"))
    username: Mapped[str] = mapped_column(String(32))
    walkin: Mapped[bool] = mapped_column(Boolean, default=False)
    # notebooks seen open (a kernel) or changed since delivery, comma-separated; sticky
    opened: Mapped[str] = mapped_column(String(2000), default="")
    changed: Mapped[str] = mapped_column(String(2000), default="")
    workshop: Mapped[Workshop] = relationship(back_populates="participants")


@dataclass(frozen=True)
class WorkshopBooking:
    """What the spawner needs to place a participant's course session in the workshop."""

    workshop: str
    title: str
    reservation: str
    start: datetime
    end: datetime
    gpus: int
    gpu_slices: int
    cpus: int
    memory_gb: int

    @property
    def minutes_left(self) -> int:
        return max(int((self.end - datetime.now()).total_seconds() // 60), 1)

    def resources(self) -> dict:
        return {"gpus": self.gpus, "gpu_slices": self.gpu_slices, "cpus": self.cpus, "memory_gb": self.memory_gb}


@functools.lru_cache(maxsize=8)
def open_store(url: str) -> Store:
    """One Store (and engine) per database for the whole process (every spawner shares it)."""
    return Store(url)


class Store:
    """Open (and create) the workshops database."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            # private by default: the record names participants and owners
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            os.chmod(path, 0o600)
        self.engine = create_engine(url, future=True)
        Base.metadata.create_all(self.engine)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def get(self, session: Session, workshop_id: int) -> Workshop | None:
        return session.get(Workshop, workshop_id)

    def by_name(self, session: Session, name: str) -> Workshop | None:
        return session.scalars(select(Workshop).where(Workshop.name == name)).first()

    def all(self, session: Session) -> list[Workshop]:
        return list(session.scalars(select(Workshop).order_by(Workshop.start.desc())))

    def overlapping(self, session: Session, start: datetime, end: datetime) -> list[Workshop]:
        return list(session.scalars(select(Workshop).where(
            Workshop.state != "ended", Workshop.start < end, Workshop.end > start)))

    def bookings_for(self, username: str, now: datetime | None = None) -> dict[str, WorkshopBooking]:
        """course slug -> booking, for the workshops the user takes part in that are open now."""
        now = now or datetime.now()
        with self.session() as session:
            rows = session.scalars(
                select(Workshop).join(Participant).where(
                    Participant.username == username, Workshop.state != "ended",
                    Workshop.start <= now, Workshop.end > now)
            )
            return {w.course: WorkshopBooking(w.name, w.title, w.reservation, w.start, w.end, w.gpus,
                                              w.gpu_slices, w.cpus, w.memory_gb) for w in rows}

    def upcoming_for(self, username: str, course: str, now: datetime | None = None) -> Workshop | None:
        """The user's next (not yet open) workshop of this course, to explain normal queueing."""
        now = now or datetime.now()
        with self.session() as session:
            return session.scalars(
                select(Workshop).join(Participant).where(
                    Participant.username == username, Workshop.course == course,
                    Workshop.state != "ended", Workshop.start > now).order_by(Workshop.start)
            ).first()
