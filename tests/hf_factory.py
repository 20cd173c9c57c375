"""Tiny random Hugging Face models of every supported family, made in the test itself."""

from __future__ import annotations

import torch
import transformers

# A checkpoint a fixture writes is not a command's output: tests read stderr (capsys, run_cli)
# and transformers' "Writing model shards" bar would land there.
transformers.utils.logging.disable_progress_bar()

VOCAB = 320

FAMILIES = {
    "llama_mha": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=4)),
    "llama_gqa_llama3": (
        "LlamaConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "mistral_sliding": (
        "MistralConfig",
        dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=5),
    ),
    "qwen2": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
    "gemma": ("GemmaConfig", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16)),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    # sliding windows (5, 6) shorter than test_parity.SEQ; caps low enough to bite
    "gemma2": (
        "Gemma2Config",
        dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=5,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        ),
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=6,
            sliding_window_pattern=2,
            query_pre_attn_scalar=24,
            final_logit_softcapping=3.0,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0},
            },
        ),
    ),
    "olmo2": (
        "Olmo2Config",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        ),
    ),
    # 6 heads: not a power of two, so the ALiBi slopes take their interleaved second series
    "bloom": ("BloomConfig", dict(hidden_size=48, n_layer=2, n_head=6)),
    "phi3": ("Phi3Config", dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=5)),
    # longrope on half the head dims; test_parity.SEQ passes original_max_position_embeddings
    # (16), so the long factors and the attention factor sqrt(1 + ln 8 / ln 16) are in play
    "phi3_longrope": (
        "Phi3Config",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            original_max_position_embeddings=16,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0, 1.3, 1.7, 2.1],
                "long_factor": [1.5, 3.0, 6.0, 12.0],
            },
        ),
    ),
    # logit_scale > 1 so the scale is not hidden by small logits; a second, untied variant
    # with per-head q/k LayerNorms and attention biases
    "cohere": ("CohereConfig", dict(num_attention_heads=4, num_key_value_heads=2, logit_scale=2.0)),
    "cohere_qk_norm": (
        "CohereConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            logit_scale=0.5,
            use_qk_norm=True,
            attention_bias=True,
            tie_word_embeddings=False,
        ),
    ),
    # mixtures of experts: 8 experts, top-2 (qwen3_moe renormalises the top-k weights, as
    # mixtral always does); olmoe_clip clamps q/k/v low enough to bite
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            norm_topk_prob=True,
        ),
    ),
    "mixtral": (
        "MixtralConfig",
        dict(
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2
        ),
    ),
    "olmoe": (
        "OlmoeConfig",
        dict(num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2),
    ),
    "olmoe_clip": (
        "OlmoeConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=4,
            num_experts=8,
            num_experts_per_tok=3,
            clip_qkv=1.0,
            attention_bias=True,
        ),
    ),
}
MOE = ("qwen2_moe", "qwen3_moe", "mixtral", "olmoe", "olmoe_clip")


def make_config(family: str, vocab: int = VOCAB, **overrides):
    cls_name, kw = FAMILIES[family]
    cls = getattr(transformers, cls_name)
    if cls_name in ("GPT2Config", "BloomConfig"):
        base = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2)
    else:
        base = dict(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            max_position_embeddings=128,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=family in ("gemma", "qwen3", "gemma2", "gemma3_text", "cohere"),
        )
    base.update(kw)
    base.update(overrides)
    return cls(**base)


def make_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random model; norms and biases get random values too so that no term hides."""
    torch.manual_seed(seed)
    cfg = make_config(family, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0.0, 0.05)
    return model.eval()


def save_model(model: torch.nn.Module, path: str, tokenizer=None) -> str:
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
