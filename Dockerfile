# affect-bridge service image.
#   docker build -t affect-bridge .
#   docker build --build-arg CONFIG=deploy.toml -t affect-bridge .   # bake other models
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 \
#     -t affect-bridge:cuda .                                          # for the chart's gpu.image
# The configured model weights are downloaded at build time (affect-bridge download-models)
# into /models, so pods start offline (HF_HUB_OFFLINE=1) on a read-only root filesystem.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/models

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY bridge ./bridge
COPY analyzers ./analyzers
# The CPU build of torch first, pinned (an unpinned torch pulls a multi-GB CUDA build); for GPU
# nodes build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124.
ARG TORCH_INDEX=""
RUN if [ -n "$TORCH_INDEX" ]; then \
        pip install --index-url "$TORCH_INDEX" -c constraints.txt torch; \
    else \
        pip install -c constraints.txt torch; \
    fi \
 && pip install -c constraints.txt '.[semantic]'

# Bake the weights of every model the configuration names.
ARG CONFIG=""
COPY ${CONFIG:-pyproject.toml} /tmp/build-config
RUN if [ -n "$CONFIG" ]; then affect-bridge download-models --config /tmp/build-config; \
    else affect-bridge download-models; fi \
 && rm -f /tmp/build-config \
 && chmod -R a+rX /models

RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin affect \
 && mkdir -p /var/lib/affect-bridge && chown affect:affect /var/lib/affect-bridge
USER 10001
# No AFFECT_BRIDGE_* variables here: the environment beats the config file, so one set in the
# image would override the chart's config (its listen, on service.port). A plain `docker run`
# gets its address from CMD; the chart passes its own args, and its config's listen decides.
ENV HF_HUB_OFFLINE=1
EXPOSE 9464
VOLUME ["/var/lib/affect-bridge"]
ENTRYPOINT ["affect-bridge"]
CMD ["run", "--listen", "0.0.0.0:9464"]
