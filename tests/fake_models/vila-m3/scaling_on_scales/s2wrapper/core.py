def forward(model, input, scales=None, img_sizes=None, max_split_size=None, resize_output_to_idx=0,
            num_prefix_token=0, output_shape="bnc", split_forward=False):
    raise NotImplementedError("fake s2wrapper: multi-scale forward is not used by VILA-M3")
