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


def test_completions_continue_an_image_opened_by_the_prompt(vocab):
    """One parse for completions: a completion that begins with image codes finishes the image its prompt opened
    (a prompt ending with BOI): that image is its first segment, at start -1, complete with all its codes."""
    boi, eoi, pad = vocab.boi_token_id, vocab.eoi_token_id, 1
    c1, i1 = _img(vocab, 1)
    c2, i2 = _img(vocab, 2)
    completions = [
        [*i1, eoi] + T + [boi, *i2, eoi],  # the opened image, then one of its own
        [*i2[:20]],  # cut by the budget
        T + [boi, *i1, eoi],  # the prompt opened nothing
        [],
    ]
    segs = vocab.parse_completions(completions)
    assert segs.batch_index.tolist() == [0, 0, 1, 2]
    assert segs.start.tolist() == [-1, 68, -1, 3] and segs.end.tolist() == [65, 134, 20, 69]
    assert segs.complete.tolist() == [True, True, False, True] and segs.stray_image_tokens.tolist() == [0] * 4
    torch.testing.assert_close(segs.complete_codes.reshape(3, -1), torch.stack([c1, c2, c1]))
    rows = segs.per_row(4)
    torch.testing.assert_close(rows[0][0].codes, c1)
    torch.testing.assert_close(rows[1][0].codes, c2[:20])
    assert rows[3] == []
    # A right-padded tensor reads the same; plain parse_segments counts the leading codes as stray.
    width = max(len(row) for row in completions)
    padded = torch.tensor([row + [pad] * (width - len(row)) for row in completions])
    from_tensor = vocab.parse_completions(padded)
    assert from_tensor.start.tolist()[:2] == [-1, 68] and from_tensor.complete_codes.shape == (3, 8, 8)
    assert vocab.parse_segments(completions).stray_image_tokens.tolist() == [64, 20, 0, 0]
    # parse_segments(continue_open_image=True) reads a right-padded tensor with its attention mask the same way.
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in completions])
    masked = vocab.parse_segments(padded, attention_mask=mask, continue_open_image=True)
    assert masked.start.tolist() == segs.start.tolist() and masked.complete.tolist() == segs.complete.tolist()


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
