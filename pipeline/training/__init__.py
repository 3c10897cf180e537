"""The training toolkit shared by everything that trains (``dfer finetune``, SocialFusion):

* :mod:`.split`: the one train/validation split, by video, stratified by label, seeded and order-independent;
* :mod:`.lora`: the one LoRA builder (peft), checking that the targets name linear layers of the model;
* :mod:`.optim`: AdamW over the trainable parameters and ``transformers.get_scheduler``;
* :mod:`.checkpoint`: atomic, resumable checkpoints without pickle.

Class-aware samplers come from :mod:`pipeline.eval.longtail`. Importing this package loads neither torch nor peft.
"""
