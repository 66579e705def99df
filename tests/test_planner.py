import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from g2p_batch.job.planner import InputError, Shard, plan_shards, resolve_sources
from tests.lexicons import lexicon, write


def test_row_groups_pack_into_shards_of_about_rows_per_shard(tmp_path):
    path = write(lexicon(95), tmp_path / "words.parquet", row_group_size=10)   # 9x10 + 5
    plan = plan_shards(str(path), "word", "lang", rows_per_shard=30)
    assert [(s.rg_start, s.rg_stop, s.num_rows, s.skip) for s in plan.shards] == [
        (0, 3, 30, 0), (3, 6, 30, 0), (6, 9, 30, 0), (9, 10, 5, 0)]
    assert [s.first_row for s in plan.shards] == [0, 30, 60, 90]
    assert plan.total_rows == 95


def test_a_big_row_group_is_cut_into_row_ranges(tmp_path):
    """pandas and pyarrow write a file as one row group by default: it must still spread."""
    path = write(lexicon(50), tmp_path / "w.parquet", row_group_size=40)
    plan = plan_shards(str(path), "word", None, rows_per_shard=15)
    assert [(s.first_row, s.num_rows, s.rg_start, s.skip) for s in plan.shards] == [
        (0, 14, 0, 0), (14, 14, 0, 14), (28, 12, 0, 28), (40, 10, 1, 0)]
    one = write(lexicon(1000), tmp_path / "one.parquet", row_group_size=10**6)
    plan = plan_shards(str(one), "word", None, rows_per_shard=300)
    assert [s.num_rows for s in plan.shards] == [250] * 4
    assert len({s.name for s in plan.shards}) == 4


def test_shard_names_are_deterministic_and_distinct_per_path(tmp_path):
    a = write(lexicon(20), tmp_path / "a" / "words.parquet", row_group_size=10)
    b = write(lexicon(20), tmp_path / "b" / "words.parquet", row_group_size=10)
    plan = plan_shards(str(tmp_path), "word", "lang", rows_per_shard=10)
    names = [s.name for s in plan.shards]
    assert len(set(names)) == 4
    assert names == [s.name for s in plan_shards(str(tmp_path), "word", "lang", 10).shards]
    first = Shard(str(a), 0, 40, 0, 4)
    assert first.name.startswith("words-") and first.name.endswith("-r000000000-000000039.parquet")
    assert Shard(str(a), 0, 1, 0, 1).id != Shard(str(b), 0, 1, 0, 1).id


@pytest.mark.parametrize("stem", ["词典", "(draft) words", "_hidden", ".dot", "__", "a b", "ünï", "-x"])
def test_shard_names_never_start_with_underscore_or_dot(stem):
    """pyarrow.dataset, Spark and Hive skip such files: a job's rows would silently vanish."""
    name = Shard(f"/data/{stem}.parquet", 0, 5, 0, 1).name
    assert not name.startswith(("_", ".")), name
    assert "/" not in name and name.endswith(".parquet")
    if stem == "词典":
        assert name.startswith("词典-")


def test_directory_glob_and_uri_inputs(tmp_path):
    write(lexicon(5), tmp_path / "d" / "x.parquet", 5)
    write(lexicon(5), tmp_path / "d" / "sub" / "y.parquet", 5)
    write(lexicon(5), tmp_path / "d" / "_tmp" / "z.parquet", 5)        # hidden: skipped
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / ".x.parquet.crc").write_text("")
    d = tmp_path / "d"
    assert resolve_sources(str(d)) == [str(d / "sub" / "y.parquet"), str(d / "x.parquet")]
    assert resolve_sources(str(d / "*.parquet")) == [str(d / "x.parquet")]    # '*' stops at '/'
    assert resolve_sources(str(d / "*" / "*.parquet")) == [str(d / "sub" / "y.parquet")]
    assert resolve_sources(f"file://{d}/x.parquet") == [str(d / "x.parquet")]


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        plan_shards(str(tmp_path / "nope.parquet"), "word", None, 10)
    with pytest.raises(InputError, match="matches no files"):
        plan_shards(str(tmp_path / "*.parquet"), "word", None, 10)


def test_schema_problems_name_file_column_and_fix(tmp_path):
    good = write(lexicon(10), tmp_path / "in" / "good.parquet", 5)
    write(lexicon(10).drop_columns(["lang"]), tmp_path / "in" / "nolang.parquet", 5)
    t = lexicon(10)
    write(t.set_column(1, "word", pa.array(range(10))), tmp_path / "in" / "intword.parquet", 5)
    (tmp_path / "in" / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError) as info:
        plan_shards(str(tmp_path / "in"), "word", "lang", 10)
    msg = str(info.value)
    assert "3 input files have problems" in msg and "nothing was transcribed" in msg
    assert "corrupt.parquet: cannot read it as Parquet" in msg
    assert "nolang.parquet: has no column 'lang'" in msg and "set lang_column" in msg
    assert "intword.parquet: column 'word' is int64, not a string column" in msg
    assert "good.parquet" not in msg
    plan_shards(str(good), "word", "lang", 10)      # the good one alone is fine


def test_string_variants_accepted_and_output_column_clash_refused(tmp_path):
    t = lexicon(10)
    t = t.set_column(1, "word", t.column("word").cast(pa.large_string()))
    t = t.set_column(2, "lang", t.column("lang").dictionary_encode())
    path = write(t, tmp_path / "v.parquet", 5)
    assert pq.read_schema(path).field("lang").type == pa.dictionary(pa.int32(), pa.string())
    assert plan_shards(str(path), "word", "lang", 10).total_rows == 10
    clash = write(t.append_column("status", pa.array(["x"] * 10)), tmp_path / "c.parquet", 5)
    with pytest.raises(InputError, match="columns \\['status'\\] that the output adds"):
        plan_shards(str(clash), "word", "lang", 10)


def test_empty_file_gives_one_empty_shard(tmp_path):
    path = write(lexicon(0), tmp_path / "empty.parquet", 5)
    (shard,) = plan_shards(str(path), "word", "lang", 10).shards
    assert shard.num_rows == 0 and shard.name.endswith("-empty.parquet")


def test_non_parquet_files_in_a_folder_are_skipped_and_listed(tmp_path):
    write(lexicon(5), tmp_path / "d" / "x.parquet", 5)
    (tmp_path / "d" / "README.md").write_text("# my lexicon\n")
    (tmp_path / "d" / "notes.txt").write_text("hello")
    plan = plan_shards(str(tmp_path / "d"), "word", "lang", 10)
    assert plan.files == [str(tmp_path / "d" / "x.parquet")] and plan.total_rows == 5
    assert sorted(f["file"].rsplit("/", 1)[1] for f in plan.skipped) == ["README.md", "notes.txt"]
    (tmp_path / "d" / "broken.parquet").write_bytes(b"PAR1 not really")  # named Parquet: an error
    with pytest.raises(InputError, match="broken.parquet: cannot read it as Parquet"):
        plan_shards(str(tmp_path / "d"), "word", "lang", 10)
    with pytest.raises(InputError, match="cannot read it as Parquet"):  # named explicitly: an error
        plan_shards(str(tmp_path / "d" / "README.md"), "word", "lang", 10)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "README.md").write_text("x")
    with pytest.raises(InputError, match="holds no Parquet files"):
        plan_shards(str(tmp_path / "e"), "word", "lang", 10)
