# Diffusion Studio in a container. On a CUDA host (NVIDIA driver + NVIDIA Container Toolkit):
#   docker build -t diffusion-studio .
#   docker run --gpus all -p 7860:7860 -e STUDIO_MODEL=sd15 \
#       -v studio-hf-cache:/home/studio/.cache/huggingface -v studio-outputs:/home/studio/outputs diffusion-studio
# Without `--gpus all` (and without STUDIO_MODEL) the same image runs the offline Shapes model on the CPU.
# Settings are the flags of `python app.py --help`, or their environment variables (README "Flags").
FROM python:3.11-slim

# OpenCV (headless) needs GLib; nothing else from the system.
RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 studio
WORKDIR /app

# torch and torchvision first, resolved together as a matching pair (PyPI's Linux wheels carry their CUDA runtime);
# then the rest, which keeps them.
COPY requirements.txt .
RUN pip install --no-cache-dir "torch>=2.6" "torchvision>=0.21" && pip install --no-cache-dir -r requirements.txt

COPY --chown=studio:studio . .
USER studio
ENV GRADIO_SERVER_NAME=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/studio/.cache/huggingface \
    STUDIO_OUTPUTS=/home/studio/outputs
RUN mkdir -p /home/studio/.cache/huggingface /home/studio/outputs
# Downloaded models and what users make (PNGs, trained LoRAs) outlive the container.
VOLUME ["/home/studio/.cache/huggingface", "/home/studio/outputs"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
