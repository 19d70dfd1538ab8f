"""The ops that do no multiply-accumulates under the convention: the other half of the MAC registry.

An op the counter sees is priced by a formula (:mod:`.registry`), known to do no
MACs (this module: normalisation, pooling, reductions, softmax, data movement, their
backward ops, and everything ATen tags pointwise or view), or listed as uncounted.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["is_mac_free"]


# Ops that do arithmetic the convention does not count as MACs (normalisation,
# pooling, reductions, softmax) or move data without arithmetic. Pointwise and view
# ops are recognised from their ATen tags and need not be listed.
_MAC_FREE_NAMES = frozenset(
    """
    native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training
    _native_batch_norm_legit_functional batch_norm cudnn_batch_norm miopen_batch_norm
    native_layer_norm native_group_norm _fused_rms_norm rms_norm layer_norm group_norm
    instance_norm _batch_norm_with_update _batch_norm_no_update
    max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
    adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d
    adaptive_max_pool2d adaptive_max_pool3d mkldnn_max_pool2d mkldnn_adaptive_avg_pool2d
    upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_bilinear2d
    upsample_bicubic2d upsample_linear1d upsample_trilinear3d _upsample_bilinear2d_aa
    quantize_per_tensor quantize_per_tensor_dynamic quantize_per_channel dequantize
    quantized_max_pool1d quantized_max_pool2d quantized_max_pool3d quantized_batch_norm
    int_repr q_scale q_zero_point q_per_channel_scales q_per_channel_zero_points
    _make_per_tensor_quantized_tensor _make_per_channel_quantized_tensor
    fake_quantize_per_tensor_affine fake_quantize_per_channel_affine
    _fake_quantize_per_tensor_affine_cachemask_tensor_qparams
    _upsample_nearest_exact2d grid_sampler_2d grid_sampler_3d
    sum mean prod amax amin max min argmax argmin var var_mean std std_mean norm
    linalg_vector_norm logsumexp any all cumsum cumprod
    softmax _softmax log_softmax _log_softmax _safe_softmax
    native_dropout dropout bernoulli bernoulli_ rand randn rand_like randn_like
    randint randperm normal normal_ uniform_ multinomial
    empty empty_like empty_strided new_empty new_empty_strided zeros zeros_like ones
    ones_like full full_like new_zeros new_ones new_full arange linspace scalar_tensor
    eye tril triu tril_ triu_ fill_ zero_ resize_ set_
    cat stack clone copy_ _to_copy to contiguous _copy_from _copy_from_and_resize
    lift_fresh lift_fresh_copy detach alias _local_scalar_dense item
    index index_put index_put_ _index_put_impl_ index_select index_add index_copy
    gather scatter scatter_add scatter_reduce masked_fill masked_fill_ masked_scatter
    masked_select where constant_pad_nd reflection_pad1d reflection_pad2d
    reflection_pad3d replication_pad1d replication_pad2d replication_pad3d pad
    repeat repeat_interleave flip roll rot90 embedding embedding_dense_backward
    _embedding_bag topk sort argsort nonzero unique _unique2 searchsorted bucketize
    slice_scatter select_scatter diagonal_scatter as_strided_scatter
    one_hot _pad_packed_sequence _pack_padded_sequence split_with_sizes_copy
    unsafe_split unsafe_split_with_sizes unsafe_chunk _linalg_check_errors
    _fused_sdp_choice _assert_async _assert_scalar sym_constrain_range_for_size
    _unsafe_index _unsafe_index_put isnan isinf clamp clamp_min clamp_max
    _to_dense _nested_tensor_from_mask _nested_tensor_from_tensor_list
    pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle im2col col2im
    _unsafe_view view_copy _reshape_alias reshape expand_copy permute_copy t_copy
    hardswish hardswish_ gelu_ glu prelu _prelu_kernel log_sigmoid_forward
    rrelu_with_noise rrelu_with_noise_ _conj _neg_view
    native_batch_norm_backward batch_norm_backward cudnn_batch_norm_backward
    miopen_batch_norm_backward native_layer_norm_backward native_group_norm_backward
    _fused_rms_norm_backward max_pool2d_with_indices_backward
    max_pool3d_with_indices_backward avg_pool2d_backward avg_pool3d_backward
    _adaptive_avg_pool2d_backward _adaptive_avg_pool3d_backward
    adaptive_max_pool2d_backward adaptive_max_pool3d_backward
    upsample_nearest2d_backward upsample_bilinear2d_backward
    _softmax_backward_data _log_softmax_backward_data
    nll_loss_forward nll_loss_backward nll_loss2d_forward nll_loss2d_backward
    mse_loss mse_loss_backward l1_loss smooth_l1_loss smooth_l1_loss_backward
    huber_loss huber_loss_backward binary_cross_entropy binary_cross_entropy_backward
    binary_cross_entropy_with_logits kl_div cross_entropy_loss
    native_dropout_backward embedding_backward sum_to_size
    _record_function_enter _record_function_enter_new _record_function_exit
    select_backward slice_backward diagonal_backward unfold_backward index_select_backward
    index_add_ index_copy_ index_fill index_fill_ index_reduce scatter_ scatter_add_ scatter_reduce_
    masked_scatter_ floor_divide floor_divide_ histc bincount aminmax device is_nonzero
    """.split()
)


# Quantized kernels that do no MACs (elementwise, pooling, normalisation, data movement,
# embedding lookups), matched by packet name in the ``quantized`` namespace.
_QUANTIZED_MAC_FREE_NAMES = frozenset(
    """
    add add_relu add_out add_relu_out add_scalar add_scalar_relu add_scalar_out mul mul_relu
    mul_out mul_scalar mul_scalar_relu mul_scalar_out cat cat_relu cat_out relu6 leaky_relu
    hardswish sigmoid tanh elu celu threshold hardtanh gelu softmax matmul_relu
    batch_norm batch_norm_relu batch_norm1d batch_norm2d batch_norm3d batch_norm1d_relu
    batch_norm2d_relu batch_norm3d_relu layer_norm group_norm instance_norm
    max_pool1d max_pool2d adaptive_avg_pool2d adaptive_avg_pool3d avg_pool2d
    embedding_bag_byte_rowwise_offsets embedding_bag_4bit_rowwise_offsets
    embedding_bag_2bit_rowwise_offsets embedding_bag_byte embedding_bag_4bit embedding_byte
    embedding_4bit embedding_bag_prepack embedding_bag_unpack embedding_bag_byte_prepack
    embedding_bag_byte_unpack embedding_bag_4bit_prepack embedding_bag_4bit_unpack
    conv_prepack conv1d_prepack conv2d_prepack conv3d_prepack conv_unpack conv2d_unpack
    conv3d_unpack linear_prepack linear_unpack linear_prepack_fp16 linear_unpack_fp16
    quantize_per_tensor quantize_per_channel make_quantized_cell_params_dynamic
    """.split()
)


def is_mac_free(func: Any) -> bool:
    """True for ops known to do no multiply-accumulates under this convention."""
    if func.namespace == "quantized":
        return func.overloadpacket.__name__ in _QUANTIZED_MAC_FREE_NAMES
    if func.is_view:
        return True
    tags = func.tags
    # inplace_view: ops that restride a tensor in place (squeeze_, as_strided_).
    if torch.Tag.pointwise in tags or torch.Tag.view_copy in tags or torch.Tag.inplace_view in tags:
        return True
    return func.overloadpacket.__name__ in _MAC_FREE_NAMES
