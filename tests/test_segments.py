import torch


T = [20, 21, 22]  # plain text ids (below the image-token block of the tiny vocabulary)


def _img(vocab, seed, n=None):
    g = torch.Generator().manual_seed(seed)
    n = vocab.tokens_per_image if n is None else n
    codes = torch.randint(0, vocab.num_codes, (n,), generator=g)
    return codes, vocab.codes_to_ids(codes).tolist()


def test_several_complete_images_per_row_right_padding(vocab):
    pad = 1
    c1, i1 = _img(vocab, 1)
    c2, i2 = _img(vocab, 2)
    c3, i3 = _img(vocab, 3)
    boi, eoi = vocab.boi_token_id, vocab.eoi_token_id
    row0 = T + [boi, *i1, eoi] + T + [boi, *i2, eoi] + T
    row1 = [boi, *i3, eoi] + T
    width = len(row0)
    ids = torch.full((2, width), pad)
    mask = torch.zeros(2, width, dtype=torch.long)
    ids[0], mask[0] = torch.tensor(row0), 1
    ids[1, : len(row1)], mask[1, : len(row1)] = torch.tensor(row1), 1

    segs = vocab.parse_segments(ids, attention_mask=mask)
    assert len(segs) == 3
    assert segs.batch_index.tolist() == [0, 0, 1]
    assert segs.complete.tolist() == [True, True, True]
    assert segs.start.tolist() == [3, 3 + 66 + 3, 0]
    assert segs.end.tolist() == [3 + 66, 3 + 66 + 3 + 66, 66]
    assert segs.complete_codes.shape == (3, 8, 8)
    torch.testing.assert_close(segs.complete_codes.reshape(3, -1), torch.stack([c1, c2, c3]))
    torch.testing.assert_close(segs[1].codes, c2)
    assert segs.stray_image_tokens.tolist() == [0, 0]
    assert [len(r) for r in segs.per_row(2)] == [2, 1]


def test_left_padding_and_list_input_agree(vocab):
    c1, i1 = _img(vocab, 4)
    boi, eoi = vocab.boi_token_id, vocab.eoi_token_id
    short = T + [boi, *i1, eoi]
    long = T + T + [boi, *i1, eoi] + T
    width = len(long)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    ids[0, width - len(short) :], mask[0, width - len(short) :] = torch.tensor(short), 1
    ids[1], mask[1] = torch.tensor(long), 1
    from_tensor = vocab.parse_segments(ids, attention_mask=mask)
    from_lists = vocab.parse_segments([short, long])
    assert from_tensor.complete.tolist() == from_lists.complete.tolist() == [True, True]
    torch.testing.assert_close(from_tensor.complete_codes, from_lists.complete_codes)
    assert from_tensor.start.tolist() == [width - len(short) + 3, 6]
    assert from_lists.start.tolist() == [3, 6]


def test_truncated_segment_without_eoi(vocab):
    c1, i1 = _img(vocab, 5, n=10)
    ids = [T + [vocab.boi_token_id, *i1]]
    segs = vocab.parse_segments(ids)
    assert len(segs) == 1
    assert segs.complete.tolist() == [False]
    assert segs.num_image_tokens.tolist() == [10]
    assert segs.end.tolist() == [len(ids[0])]
    torch.testing.assert_close(segs[0].codes, c1)
    assert segs.complete_codes.shape == (0, 8, 8)


def test_truncated_segment_cut_by_padding(vocab):
    _, i1 = _img(vocab, 6, n=10)
    row = T + [vocab.boi_token_id, *i1]
    ids = torch.tensor([row + [vocab.eoi_token_id] * 3])  # padding that happens to equal EOI must not close it
    mask = torch.tensor([[1] * len(row) + [0] * 3])
    segs = vocab.parse_segments(ids, attention_mask=mask)
    assert segs.complete.tolist() == [False]
    assert segs.end.tolist() == [len(row)]


def test_boi_inside_open_segment(vocab):
    _, part = _img(vocab, 7, n=5)
    c2, i2 = _img(vocab, 8)
    boi, eoi = vocab.boi_token_id, vocab.eoi_token_id
    row = [boi, *part, boi, *i2, eoi]
    segs = vocab.parse_segments([row])
    assert segs.complete.tolist() == [False, True]
    assert segs.start.tolist() == [0, 6]
    assert segs.end.tolist() == [6, len(row)]
    torch.testing.assert_close(segs.complete_codes.reshape(-1), c2)


def test_wrong_count_and_text_inside_segment_are_incomplete(vocab):
    _, short = _img(vocab, 9, n=63)
    _, full = _img(vocab, 10)
    boi, eoi = vocab.boi_token_id, vocab.eoi_token_id
    with_text = [boi, *full[:30], 21, *full[31:], eoi]  # 64 tokens, one of them text
    too_long = [boi, *full, full[0], eoi]
    segs = vocab.parse_segments([[boi, *short, eoi], with_text, too_long])
    assert segs.complete.tolist() == [False, False, False]
    assert segs.num_image_tokens.tolist() == [63, 63, 65]


def test_stray_image_tokens_in_text(vocab):
    _, stray = _img(vocab, 11, n=3)
    c1, i1 = _img(vocab, 12)
    boi, eoi = vocab.boi_token_id, vocab.eoi_token_id
    segs = vocab.parse_segments([T + stray + [boi, *i1, eoi] + stray[:1] + [eoi], T])
    assert segs.complete.tolist() == [True]
    assert segs.stray_image_tokens.tolist() == [4, 0]
    torch.testing.assert_close(segs.complete_codes.reshape(-1), c1)


def test_no_segments(vocab):
    segs = vocab.parse_segments(torch.tensor([T, T]))
    assert len(segs) == 0
    assert segs.complete_codes.shape == (0, 8, 8)
    assert segs.stray_image_tokens.tolist() == [0, 0]


def test_completions_continue_an_image_their_prompt_opened(vocab):
    """`parse_completions`: leading image codes finish the image a prompt opened with BOI (start -1)."""
    boi, eoi = vocab.boi_token_id, vocab.eoi_token_id
    c1, i1 = _img(vocab, 1)
    c2, i2 = _img(vocab, 2)
    _, partial = _img(vocab, 3, n=30)
    completions = [
        [*i1, eoi, *T, boi, *i2, eoi],  # finishes the prompt's image, then draws one more
        [*partial],  # the length limit cut the prompt's image
        T + [boi, *i2, eoi],  # an ordinary completion
        [],
    ]
    segments = vocab.parse_completions(completions)
    assert segments.batch_index.tolist() == [0, 0, 1, 2]
    assert segments.start.tolist() == [-1, 68, -1, 3]
    assert segments.end.tolist() == [65, 134, 30, 69]
    assert segments.complete.tolist() == [True, True, False, True]
    torch.testing.assert_close(segments[0].codes, c1)
    assert segments[2].codes.numel() == 30
    torch.testing.assert_close(segments.complete_codes.reshape(3, -1), torch.stack([c1, c2, c2]))
    assert segments.stray_image_tokens.tolist() == [0, 0, 0, 0]
    # Read strictly (e.g. to validate training rows), the same leading codes are stray tokens.
    strict = vocab.parse_segments(completions)
    assert strict.stray_image_tokens.tolist() == [64, 30, 0, 0] and strict.start.tolist() == [68, 3]
    # A right-padded tensor reads the same.
    padded = torch.full((4, 134), 1)
    mask = torch.zeros(4, 134, dtype=torch.long)
    for row, ids in enumerate(completions):
        padded[row, : len(ids)], mask[row, : len(ids)] = torch.tensor(ids, dtype=torch.long), 1
    tensor_parse = vocab.parse_segments(padded, attention_mask=mask, continue_open_image=True)
    assert tensor_parse.start.tolist() == segments.start.tolist()
    assert tensor_parse.complete.tolist() == segments.complete.tolist()


def test_parse_completions_is_cached_by_identity(vocab):
    """One parse per batch object: TRL hands the same `completion_ids` list to every reward of a step."""
    _, ids = _img(vocab, 4)
    batch = [[*ids, vocab.eoi_token_id], T]
    first = vocab.parse_completions(batch)
    assert vocab.parse_completions(batch) is first
    equal_copy = [list(row) for row in batch]
    again = vocab.parse_completions(equal_copy)
    assert again is not first and again.start.tolist() == first.start.tolist() == [-1]
    for _ in range(8):  # older batches leave the small cache
        vocab.parse_completions([list(T)])
    assert vocab.parse_completions(batch) is not first
