"""Trainers for the three Genie stages: tokenizer, then LAM, then dynamics (both frozen).

Each is a small module over one shared loop (``trainers.loop``)::

    python -m trainers.train_tokenizer --config configs/tokenizer_config.yaml --data_dir data
    python -m trainers.train_lam       --config configs/lam_config.yaml       --data_dir data
    python -m trainers.train_dynamics  --config configs/dynamics_config.yaml  --data_dir data \\
        --tokenizer_path checkpoints/tokenizer/latest.pt --lam_path checkpoints/lam/latest.pt
"""
