from transformer_maskgit.ctvit import CTViT
