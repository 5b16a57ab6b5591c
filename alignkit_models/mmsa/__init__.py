"""Converters from MMSA 2.2.1 ``state_dict``s to the zoo's models.

MMSA (Mao et al., "M-SENA: An Integrated Platform for Multimodal Sentiment Analysis", ACL 2022
demo; ``pip install mmsa==2.2.1``) is the reference toolkit most baselines are compared in. Each
module here maps one family of its checkpoints (parameter names, shapes, modality order) onto our
models, so that a test can show both give the same predictions on the same batch.
"""
