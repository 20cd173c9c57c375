"""The fast tier (``pytest -m "not slow"``, the inner loop: <= 3 minutes on 2 CPU cores).

Tests marked ``@pytest.mark.slow`` where they are written are left to the full suite
(``pytest -q``, CI), and so are the tests below, marked by ``conftest.py`` at collection:
they took more than ~2.5 s each on 2 busy cores (``--durations=0``). Keeping the list here,
not in each file, keeps the tier one table. ``tests/test_tiers.py`` checks every entry names
a test that exists.
"""

from __future__ import annotations

# "file::function" (every case) or "file::function[case id]" (one case)
SLOW: tuple[str, ...] = (
    "test_baselines.py::test_replay_ewc_freeze_resume_bitwise",
    "test_battery.py::test_dims_command_named_dims_and_targets",
    "test_casestudies.py::test_case_studies_compute_then_render",
    "test_cli_errors.py::test_debug_shows_traceback",
    "test_experiment.py::test_zeroing_matches_pytorch",
    "test_expert_regions.py::test_core_experts_by_importance_per_layer_and_global",
    "test_experts.py::test_experts_command_writes_report",
    "test_experts.py::test_planted_router_is_found",
    "test_families.py::test_regions_freeze_interventions_import_no_model",
    "test_freeze.py::test_adamw_frozen_elements_bitwise_unchanged[True]",
    "test_freeze.py::test_freeze_elements_accepts_region_and_partial_mask",
    "test_freeze.py::test_optax_masked_is_not_a_freeze",
    "test_generate.py::test_generate_cli_with_edit",
    "test_generate.py::test_longrope_switch_mid_generation_is_refused",
    "test_granularity.py::test_rows_and_columns_are_exact_and_top_by_summed_abs[0.01-row-0]",
    "test_head.py::test_bfloat16_scores_are_float32_and_close_to_float32",
    "test_head.py::test_chunked_head_matches_unchunked_to_float32_rounding",
    "test_head.py::test_chunked_model_loss_and_gradient_match_unchunked",
    "test_head.py::test_cli_scope_metadata_and_regions_check",
    "test_head.py::test_compiled_step_holds_no_batch_seq_vocab_buffer",
    "test_head.py::test_scope_only_gradients_are_smaller_and_exact",
    "test_importance.py::test_cli_writes_resumes_bitwise_and_skips",
    "test_importance.py::test_python_api_resume_is_bitwise",
    "test_importance.py::test_taylor_invariant_to_batch_size",
    "test_importance.py::test_wanda_equals_hand_computation_llama",
    "test_importance.py::test_wanda_gpt2_conv1d_layout",
    "test_importance_schedule.py::test_halves_recombine_to_full[taylor]",
    "test_importance_schedule.py::test_random_scores_give_chance_jaccard[0.01]",
    "test_interventions.py::test_region_op",
    "test_moe.py::test_battery_on_moe",
    "test_moe.py::test_dispatch_cost_follows_top_k_not_experts",
    "test_moe.py::test_eval_drop_expert_cli",
    "test_moe.py::test_export_is_read_by_transformers",
    "test_moe.py::test_frozen_experts_stay_bitwise_through_adamw",
    "test_moe.py::test_routing_switches_are_live",
    "test_moe.py::test_training_shards_experts_over_the_mesh",
    "test_names.py::test_random_language_name_is_refused_or_stays_inside_out",
    "test_nnx_module.py::test_module_matches_functional_and_names_state",
    "test_parity.py::test_gemma_switches_are_live",
    "test_readme.py::test_quickstart_runs",
    "test_regions.py::test_core_equals_bruteforce_reference[0.01-per-tensor]",
    "test_regions.py::test_core_equals_bruteforce_reference[0.01-global]",
    "test_regions.py::test_monolingual_disjoint_from_other_languages[per-tensor]",
    "test_regions.py::test_random_exact_k_and_seeded",
    "test_regions_cli.py::test_granularity_flag_writes_element_mask_with_metadata",
    "test_regions_cli.py::test_random_reproducible_and_exact",
    "test_regions_cli.py::test_scores_file_metadata_reaches_region",
    "test_regions_cli.py::test_stats_and_compare",
    "test_regions_cli.py::test_subprocess_error_has_no_traceback",
    "test_regions_stream.py::test_core_matches_a_stable_sort_reference",
    "test_regions_stream.py::test_directory_stability_reads_halves_lazily",
    "test_regions_stream.py::test_files_give_the_in_memory_masks[core]",
    "test_regions_stream.py::test_files_give_the_in_memory_masks[random]",
    "test_regions_stream.py::test_files_give_the_in_memory_masks[monolingual]",
    "test_regions_stream.py::test_files_give_the_in_memory_masks[bottom-monolingual]",
    "test_reliability.py::test_tasks_writes_nothing_outside_its_outputs",
    "test_resume_identity.py::test_changed_identity_is_refused_and_checkpoints_stay"
    "[model weights (same shapes)]",
    "test_resume_identity.py::test_restart_sets_the_old_run_aside",
    "test_sharding.py::test_plan_cli",
)

# Checks swept over every model family: the fast tier runs each on its first family only.
FAMILY_SWEEPS: tuple[str, ...] = (
    "test_families.py::test_every_parameter_has_a_role",
    "test_gguf.py::test_logits_match_transformers",
    "test_moe.py::test_both_layouts_match_transformers",
    "test_moe.py::test_drop_expert_equals_a_router_without_its_row",
    "test_moe.py::test_eval_perplexity_matches_torch",
    "test_parity.py::test_bfloat16_logits_as_close_to_float64_as_torch_bfloat16",
    "test_parity.py::test_eval_perplexity_matches_torch",
    "test_parity.py::test_logits_match_transformers",
)
