# One image per template, used twice (Google's single-image pattern, see
# GoogleCloudPlatform/python-docs-samples dataflow/flex-templates/pipeline_with_dependencies):
#   - as the Flex Template image: Dataflow runs the launcher binary, which runs
#     FLEX_TEMPLATE_PYTHON_PY_FILE with the template parameters;
#   - as the workers' sdk_container_image: ENTRYPOINT is Beam's boot.
# Launcher and workers therefore run the same code with the same dependencies.
#
#   docker build --target cpu --build-arg TEMPLATE=streaming_features -t IMAGE .
#   docker build --target gpu --build-arg TEMPLATE=embed_texts -t IMAGE .
#
# TEMPLATE only changes the last instruction (the entry file), so the three templates share
# every layer. Keep PYTHON_VERSION and BEAM_VERSION equal to pyproject.toml (a test checks).
# .dockerignore keeps .venv and caches out of the build context.

ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0
# Bump with: gcloud container images list-tags gcr.io/dataflow-templates-base/python311-template-launcher-base
ARG LAUNCHER_TAG=20230622_RC00

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam-sdk
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:${LAUNCHER_TAG} AS launcher

# ---------------------------------------------------------------- Python runtimes
FROM python:${PYTHON_VERSION}-slim-bookworm AS cpu-runtime
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# NVIDIA's base image: CUDA runtime and the container-runtime settings (NVIDIA_VISIBLE_DEVICES,
# NVIDIA_DRIVER_CAPABILITIES, LD_LIBRARY_PATH with /usr/local/nvidia, where Dataflow mounts the
# driver it installs for `install-nvidia-driver`). torch's CUDA wheels bring cuDNN and cuBLAS,
# so the small `base` flavour is enough. The CUDA version must match TORCH_INDEX_URL's.
FROM nvidia/cuda:12.4.1-base-ubuntu22.04 AS gpu-runtime
ARG PYTHON_VERSION
# Not pinned: Ubuntu keeps only the newest build of a package in jammy-updates, so a pin breaks
# the build at the next security update; the base image tag pins the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
    && rm -rf /var/lib/apt/lists/* \
    && "python${PYTHON_VERSION}" -m venv /opt/python
# `python`, `python3` and `pip` on PATH are the venv's: Beam's boot and the launcher call them.
ENV PATH=/opt/python/bin:${PATH} \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124

# ---------------------------------------------------------------- CPU image
FROM cpu-runtime AS cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
WORKDIR /template
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml flex_templates/image_requirements.py ./
RUN python image_requirements.py pyproject.toml --extra embeddings --out /tmp/req \
    && if [ -s /tmp/req/torch.txt ]; then \
        pip install --index-url "${TORCH_INDEX_URL}" -r /tmp/req/torch.txt; fi \
    && pip install -r /tmp/req/requirements.txt \
    && rm -rf /tmp/req
# Then the code, installed non-editable and without resolving again (all deps are above).
COPY README.md ./
COPY pipelines pipelines
COPY transforms transforms
COPY flex_templates flex_templates
RUN pip install --no-deps . \
    && pip check \
    && pip freeze
# Runs as root: Google's launcher writes its logs under /var/log/dataflow and fails as another
# user (python-docs-samples#13213), and Beam's boot installs staged packages at start-up.
ARG TEMPLATE=streaming_features
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/flex_templates/${TEMPLATE}/main.py
ENTRYPOINT ["/opt/apache/beam/boot"]

# ---------------------------------------------------------------- GPU image
# Same steps as `cpu` on the CUDA runtime; torch comes from the CUDA index.
FROM gpu-runtime AS gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
WORKDIR /template
COPY pyproject.toml flex_templates/image_requirements.py ./
RUN python image_requirements.py pyproject.toml --extra embeddings --out /tmp/req \
    && if [ -s /tmp/req/torch.txt ]; then \
        pip install --index-url "${TORCH_INDEX_URL}" -r /tmp/req/torch.txt; fi \
    && pip install -r /tmp/req/requirements.txt \
    && rm -rf /tmp/req
COPY README.md ./
COPY pipelines pipelines
COPY transforms transforms
COPY flex_templates flex_templates
RUN pip install --no-deps . \
    && pip check \
    && pip freeze
ARG TEMPLATE=embed_texts
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/flex_templates/${TEMPLATE}/main.py
ENTRYPOINT ["/opt/apache/beam/boot"]
