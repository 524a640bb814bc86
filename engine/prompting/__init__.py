"""What a prompt asks for beyond its words, as AUTOMATIC1111 users write it.

``syntax`` reads ``<lora:NAME:WEIGHT>`` tags and ``(word:1.3)`` weights (no torch: the bot
validates with it); ``library`` finds LoRA and embedding files and checks them against a model
(small file headers only); ``encoding`` turns weighted or long prompts into embeddings with the
pipeline's own text encoders; ``networks`` loads LoRAs and embeddings into a warm pipeline.
"""
