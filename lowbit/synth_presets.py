"""Architecture presets for `lowbit.synth`: the config.json fields of real models and tiny twins.

Tiny presets keep every dimension off multiples of 128 (hidden 192/320, intermediate 448, head_dim
32/64), so edge blocks and kept-BF16 fallbacks are exercised. Real presets copy the published
config.json of the named model (dimensions only; weights are random).
"""

from __future__ import annotations

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe")

ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
}

_TINY_COMMON = {"vocab_size": 384, "num_hidden_layers": 2, "max_position_embeddings": 512,
                "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False}

#: arch -> {preset name -> config fields}. "tiny" exists for every arch.
PRESETS: dict[str, dict[str, dict]] = {
    "llama": {
        "tiny": {**_TINY_COMMON, "hidden_size": 320, "intermediate_size": 448,
                 "num_attention_heads": 5, "num_key_value_heads": 1, "head_dim": 64},
        # every dim a multiple of 128: for loaders that refuse partial FP8 blocks (transformers fp8)
        "tiny-aligned": {**_TINY_COMMON, "hidden_size": 256, "intermediate_size": 512,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64},
        "llama3-8b": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                      "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                      "head_dim": 128, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
                      "rope_theta": 500000.0, "tie_word_embeddings": False},
    },
    "mistral": {
        "tiny": {**_TINY_COMMON, "hidden_size": 320, "intermediate_size": 448,
                 "num_attention_heads": 10, "num_key_value_heads": 2, "head_dim": 32,
                 "sliding_window": None},
        "mistral-7b": {"vocab_size": 32768, "hidden_size": 4096, "intermediate_size": 14336,
                       "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                       "head_dim": 128, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
                       "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False},
    },
    "qwen2": {
        "tiny": {**_TINY_COMMON, "hidden_size": 320, "intermediate_size": 448,
                 "num_attention_heads": 5, "num_key_value_heads": 1, "use_sliding_window": False},
        "qwen2.5-7b": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                       "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                       "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                       "use_sliding_window": False, "tie_word_embeddings": False},
        "qwen2.5-72b": {"vocab_size": 152064, "hidden_size": 8192, "intermediate_size": 29568,
                        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                        "use_sliding_window": False, "tie_word_embeddings": False},
    },
    "qwen3": {
        "tiny": {**_TINY_COMMON, "hidden_size": 192, "intermediate_size": 448,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                 "use_sliding_window": False},
        "qwen3-8b": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
                     "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
                     "rope_theta": 1000000.0, "use_sliding_window": False, "tie_word_embeddings": False},
    },
    "mixtral": {
        "tiny": {**_TINY_COMMON, "hidden_size": 320, "intermediate_size": 448,
                 "num_attention_heads": 10, "num_key_value_heads": 2, "head_dim": 32,
                 "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None},
        "mixtral-8x7b": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                         "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                         "head_dim": 128, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
                         "rope_theta": 1000000.0, "num_local_experts": 8, "num_experts_per_tok": 2,
                         "sliding_window": None, "tie_word_embeddings": False},
    },
    "qwen2_moe": {
        "tiny": {**_TINY_COMMON, "hidden_size": 320, "intermediate_size": 448,
                 "num_attention_heads": 5, "num_key_value_heads": 1, "num_experts": 4,
                 "num_experts_per_tok": 2, "moe_intermediate_size": 160,
                 "shared_expert_intermediate_size": 448, "decoder_sparse_step": 1,
                 "norm_topk_prob": False, "use_sliding_window": False, "mlp_only_layers": []},
        "qwen1.5-moe-a2.7b": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
                              "num_hidden_layers": 24, "num_attention_heads": 16,
                              "num_key_value_heads": 16, "max_position_embeddings": 8192,
                              "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "num_experts": 60,
                              "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
                              "shared_expert_intermediate_size": 5632, "decoder_sparse_step": 1,
                              "norm_topk_prob": False, "use_sliding_window": False,
                              "mlp_only_layers": [], "tie_word_embeddings": False},
        "qwen2-57b-a14b": {"vocab_size": 151936, "hidden_size": 3584, "intermediate_size": 18944,
                           "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                           "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                           "rope_theta": 1000000.0, "num_experts": 64, "num_experts_per_tok": 8,
                           "moe_intermediate_size": 2560, "shared_expert_intermediate_size": 20480,
                           "decoder_sparse_step": 1, "norm_topk_prob": False,
                           "use_sliding_window": False, "mlp_only_layers": [],
                           "tie_word_embeddings": False},
    },
    "qwen3_moe": {
        "tiny": {**_TINY_COMMON, "hidden_size": 192, "intermediate_size": 448,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                 "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 256,
                 "decoder_sparse_step": 1, "norm_topk_prob": True, "use_sliding_window": False,
                 "mlp_only_layers": []},
        "qwen3-30b-a3b": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
                          "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
                          "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
                          "rope_theta": 1000000.0, "num_experts": 128, "num_experts_per_tok": 8,
                          "moe_intermediate_size": 768, "decoder_sparse_step": 1, "norm_topk_prob": True,
                          "use_sliding_window": False, "mlp_only_layers": [],
                          "tie_word_embeddings": False},
    },
}


def preset_names() -> dict[str, list[str]]:
    return {arch: sorted(p) for arch, p in PRESETS.items()}
