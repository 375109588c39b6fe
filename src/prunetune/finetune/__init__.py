"""Fine-tuning methods, one file each (method class, its options model, its registration), and
knowledge distillation.

`base.py` holds the `Method` every method extends and the options shared by the methods that adapt
chosen linear layers; `peft.py` the methods built on `peft` and the masked merge of LoRA and IA3;
`structure.py` re-inserts what a method added into a saved model. Adding a method is one file here
plus its line in `prunetune/builtins.py`; the recipe validates `finetune.peft` through the method's
`options` model.
"""
