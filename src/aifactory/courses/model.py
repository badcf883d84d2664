"""Course metadata: what a valid ``course.yaml`` becomes, and the problems of an invalid one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CourseResources:
    partition: str
    gpus: int
    gpu_type: str
    cpus: int
    memory_gb: int
    hours: int
    gpu_slices: int = 0  # shares of one GPU (Slurm gres/shard) instead of whole GPUs

    def as_options(self) -> dict:
        """The spawner options a course start asks for (validated like form input)."""
        return {
            "partition": self.partition,
            "gpus": self.gpus,
            "gpu_slices": self.gpu_slices,
            "gpu_type": self.gpu_type,
            "cpus": self.cpus,
            "memory_gb": self.memory_gb,
            "hours": self.hours,
        }


@dataclass(frozen=True)
class Course:
    slug: str
    path: Path
    title: str
    summary: str
    level: str
    audience: str
    estimated_duration_hours: float
    objectives: tuple[str, ...]
    prerequisites: tuple[str, ...]
    resources: CourseResources
    notebooks: tuple[str, ...]
    datasets: tuple[str, ...] = ()  # registered datasets (hub_config/datasets.yaml) the notebooks load

    @property
    def requires_gpu(self) -> bool:
        return self.resources.gpus > 0 or self.resources.gpu_slices > 0

    @property
    def first_notebook(self) -> str:
        return self.notebooks[0]

    @property
    def lab_path(self) -> str:
        """Where a course session opens, relative to the server: the student's copy of notebook 1."""
        return f"lab/tree/courses/{self.slug}/{self.first_notebook}"


@dataclass
class CourseProblems:
    errors: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")
