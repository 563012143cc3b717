"""rstar-jax: rStar-Math self-evolution (policy, PPM, MCTS, sandbox) in JAX."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.7.1",  # jax.memory.Space (the search kernels write their selection to host memory)
    "flax>=0.11",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "ml-collections>=1.0",
    "numpy>=1.26",
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "transformers>=4.45",  # tokenizer loading only; never used for model compute
    "sentencepiece>=0.2",
    "absl-py>=2.0",
    "tqdm>=4.66",
    "sympy>=1.12",  # pre-imported by the sandbox workers
    "math-verify>=0.7",
    "grain>=0.2.10",
]

EXTRAS = {
    # torch is the CPU reference implementation in tests only; rstar_jax never imports it.
    # setuptools: readme_test builds the wheel and sdist with its PEP 517 backend (bdist_wheel built in from 70.1;
    # a Python >= 3.12 venv has no setuptools of its own). pytest-xdist: the suite runs on every core (pytest.ini).
    "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "torch==2.13.0", "setuptools>=70.1"],
    "cuda": ["jax[cuda12]"],
    "tpu": ["jax[tpu]"],
    "tfds": ["tensorflow-datasets>=4.9"],
}

setup(
    name="rstar-jax",
    version="0.1.0",
    description="rStar-Math self-evolution (Qwen2 policy, PPM, batched MCTS, sandbox) in JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rstar_jax", "rstar_jax.*", "sandbox", "sandbox.*"]),
    # search/native/*.cc: the native CPU tree kernels, compiled on first use (rstar_jax/search/native).
    package_data={"rstar_jax": ["assets/*.json", "assets/*.md", "assets/prompts/*.json", "search/native/*.cc"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
