"""pip install -e .[dev]   # asrkit and what its tests need"""

from setuptools import find_packages, setup

setup(
    name="asrkit",
    version="0.1.0",
    description="Speech recognition toolkit in pure PyTorch: Zipformer, CTC/transducer/AED, LLM-ASR, lhotse recipes",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["asrkit", "asrkit.*"]),
    package_data={"asrkit.data": ["vocab/*.txt"]},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "lhotse>=1.24",
        "lilcom",
        "urllib3",  # lhotse imports it without declaring it
        "soundfile",
        "sentencepiece",
        "kaldialign",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "pypinyin",
        "scipy",  # lhotse resamples with it
    ],
    extras_require={
        "llm": ["transformers", "peft", "accelerate", "gguf"],
        "plot": ["matplotlib"],  # asrkit scaling fit --out plot.png
        "sot": ["meeteval", "dill"],  # cpWER scoring; lhotse's meeting simulator
        "ssl": ["scikit-learn", "silero-vad>=6.2"],  # k-means targets (asrkit ssl kmeans); VAD (asrkit segment)
        "dev": ["pytest", "warprnnt_numba", "numba"],  # warprnnt_numba: reference RNN-T loss in tests and bench
    },
    entry_points={"console_scripts": ["asrkit=asrkit.cli:main"]},
)
