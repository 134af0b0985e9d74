"""One distribution for the whole-slide nucleus analysis (engine, CLI, Girder plugin)."""
from setuptools import find_packages, setup

BASE = [
    "numpy>=1.24",
    "scipy>=1.10",
    "scikit-image>=0.21",
    "pandas>=2.0",
    "pyarrow>=14",
    "shapely>=2.0",
    "dask[distributed]>=2024.1",
    "large-image[tifffile,openslide,pil]==1.35.6",
    "onnxruntime>=1.17",
    "opencv-python-headless>=4.8",
    # the model contract is parsed with Triton's own protobuf schema (model_config_pb2)
    "tritonclient[grpc]>=2.40",
    "tqdm>=4.60",
]

EXTRAS = {
    "cli": ["ctk-cli>=1.5", "girder-slicer-cli-web==1.5.14"],
    "triton": ["tritonclient[http,grpc]>=2.40"],
    "gpu": ["cupy-cuda12x>=13"],
    "plugin": [
        "girder==3.2.18",
        "girder-jobs==3.2.18",
        "girder-worker==0.10.7",
        "girder-slicer-cli-web==1.5.14",
        "girder-large-image==1.35.6",
        "girder-large-image-annotation==1.35.6",
        "histomicsui==1.8.1",
        # the result ingest parses the annotation as a stream (bounded memory)
        "ijson>=3.2",
    ],
    "train": ["torch==2.13.0", "onnx>=1.15"],
    "dev": ["pytest>=8", "pytest-timeout>=2.2", "ruff==0.17.6", "jsonschema>=4"],
    # tests/girder_stack + browser test: Girder on mongomock (shims pinned to 4.3.0), celery
    # over a real Redis (redis-server from apt), Playwright driving Debian's Chromium
    "devstack": ["mongomock==4.3.0", "redis>=5", "playwright>=1.40"],
}

setup(
    name="dsa-nucleus-analysis",
    version="0.1.0",
    description="Whole-slide nucleus segmentation, classification and features for the DSA",
    python_requires=">=3.10",
    packages=find_packages(include=["slicer_cli", "slicer_cli.*"])
    + ["girder_nucleus_analysis"],
    package_dir={"girder_nucleus_analysis": "plugin/girder_nucleus_analysis"},
    # the model repository and the web client are package data (``slicer_cli/models`` and
    # ``girder_nucleus_analysis/web_client`` link to the top-level ``models/`` and ``client/``;
    # a wheel holds copies), found with importlib.resources in either kind of install
    package_data={
        "slicer_cli": ["slicer_cli_list.json", "*/*.xml", "models/*/config.pbtxt",
                       "models/*/*.md", "models/*/[0-9]*/model.*"],
        "girder_nucleus_analysis": ["web_client/*.js", "web_client/*.json"],
    },
    install_requires=BASE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "nucleus-analysis=slicer_cli.NucleusAnalysis.NucleusAnalysis:console_main",
        ],
        "girder.plugin": [
            "nucleus_analysis=girder_nucleus_analysis:NucleusAnalysisPlugin",
        ],
        "girder_worker_plugins": [
            "nucleus_analysis=girder_nucleus_analysis.worker_plugin:NucleusAnalysisWorkerPlugin",
        ],
    },
)
