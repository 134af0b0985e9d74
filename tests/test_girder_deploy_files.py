"""docker/: the files Docker would read, checked without a Docker engine (none runs here).

The compose file must parse and wire the DSA services as the DSA's own compose does; the CLI
image must follow slicer_cli_web's conventions (GPU label, ``python -m slicer_cli`` entry point,
a ``--list_cli`` smoke test at build). Everything a Dockerfile COPYs must exist.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_has_the_dsa_services_and_triton(compose):
    assert set(compose["services"]) == {"girder", "worker", "mongodb", "rabbitmq", "memcached",
                                        "triton"}
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        assert service.get("restart") == "unless-stopped", name


def test_triton_serves_the_model_repository_on_a_gpu(compose):
    triton = compose["services"]["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-repository=/models" in triton["command"]
    assert "../models:/models:ro" in triton["volumes"]
    assert (DOCKER / "../models/nucleus_unet/config.pbtxt").is_file()
    assert sorted(triton["expose"]) == ["8000", "8001", "8002"]
    device = triton["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])


@pytest.mark.security
def test_only_girder_is_published_on_the_host(compose):
    """Triton, the broker, the database and memcached have no authentication worth the name:
    only the compose network reaches them."""
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"girder"}


def test_worker_and_girder_share_broker_and_assetstore(compose):
    girder, worker = compose["services"]["girder"], compose["services"]["worker"]
    assert girder["environment"]["GIRDER_WORKER_BROKER"] == \
        worker["environment"]["GIRDER_WORKER_BROKER"]
    assert worker["environment"]["NUCLEUS_ANALYSIS_TRITON_URL"] == "grpc://triton:8001"
    assert worker["depends_on"]["triton"]["condition"] == "service_healthy"
    mount = next(v for v in girder["volumes"] if v.startswith("assetstore:"))
    assert any(v.startswith(mount.split(":")[0] + ":" + mount.split(":")[1])
               for v in worker["volumes"]), "direct paths need the same mount point"
    assert "girder_worker" in worker["command"]
    # the admin password is never a literal in the file
    assert girder["environment"]["DSA_ADMIN_PASSWORD"].startswith("${DSA_ADMIN_PASSWORD")


def test_cli_image_follows_slicer_cli_web_conventions():
    steps = _instructions(DOCKER / "Dockerfile")
    labels = " ".join(rest for word, rest in steps if word == "LABEL")
    assert 'com.nvidia.volumes.needed="nvidia_driver"' in labels
    entrypoint = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert entrypoint == ['["python", "-m", "slicer_cli"]']
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    # a normal (not editable) install: the model and the client are package data
    assert re.search(r"pip install (--no-cache-dir )?'?\.\[cli,triton\]'?", runs), runs
    assert "pip install -e" not in runs
    assert "python -m slicer_cli --list_cli" in runs
    assert "python -m slicer_cli NucleusAnalysis --xml" in runs


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "girder/Dockerfile"])
def test_dockerfile_copies_existing_sources(dockerfile):
    steps = _instructions(DOCKER / dockerfile)
    assert steps[0][0] == "FROM" or steps[0][0] == "ARG"
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile}: COPY {source} is missing"
        if word == "RUN":
            assert "apt-get install" not in rest or "rm -rf /var/lib/apt/lists" in rest
