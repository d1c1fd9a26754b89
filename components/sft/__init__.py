"""SFT step: TRL SFTTrainer on DeepMMSearchVQA (see train.py)."""
