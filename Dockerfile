# Diffusion Studio on a CUDA host:
#   docker build -t diffusion-studio .
#   docker run --gpus all -p 7860:7860 -v ~/.cache/huggingface:/root/.cache/huggingface diffusion-studio \
#       python app.py --host 0.0.0.0 --model sd15
# The base image brings CUDA torch and torchvision; requirements.txt adds the rest.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .

ENV GRADIO_SERVER_NAME=0.0.0.0 PYTHONUNBUFFERED=1
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0"]
