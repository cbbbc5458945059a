#include "model/safetensors.h"

#include <cstring>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/half.h"
#include "model/model_test_util.h"

namespace mpserve::model {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::safetensors_bytes;
using testing::TempDir;
using testing::write_bytes;

template <typename T>
std::string_view as_bytes(const std::vector<T>& v) {
  return std::string_view(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Opens a file made of `header` + data bytes and returns the error (or "" on success).
std::string open_error(const TempDir& dir, std::string_view header, size_t data_size, std::string* path_out) {
  auto path = dir / "bad.safetensors";
  write_bytes(path, safetensors_bytes(header, data_size));
  *path_out = path.string();
  auto f = SafetensorsFile::open(path);
  return f.is_ok() ? std::string() : f.error();
}

TEST(Safetensors, round_trip_keeps_dtypes_shapes_values_and_metadata) {
  TempDir dir;
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f};
  std::vector<uint16_t> f16 = {f32_to_f16(0.5f), f32_to_f16(-1.0f), f32_to_f16(2.0f)};
  std::vector<uint16_t> bf16 = {f32_to_bf16(1.0f), f32_to_bf16(-3.0f), f32_to_bf16(0.125f), f32_to_bf16(8.0f)};
  auto path = dir / "model.safetensors";
  ASSERT_TRUE(write_safetensors(path,
                                {{"a.f32", DType::kF32, {2, 3}, as_bytes(f32)},
                                 {"b.f16", DType::kF16, {3}, as_bytes(f16)},
                                 {"c.bf16", DType::kBF16, {2, 1, 2}, as_bytes(bf16)}},
                                {{"format", "pt"}})
                  .is_ok());

  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.error();
  const SafetensorsHeader& h = (*file)->header();
  EXPECT_EQ((8 + h.header_len) % 8, 0u) << "data section must start 8-byte aligned";
  EXPECT_EQ(h.metadata.at("format"), "pt");
  ASSERT_EQ(h.entries.size(), 3u);

  auto a = (*file)->tensor("a.f32");
  ASSERT_TRUE(a.is_ok()) << a.error();
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->shape_string(), "[2, 3]");
  ASSERT_EQ(a->nbytes, 24u);
  EXPECT_EQ(std::memcmp(a->data, f32.data(), 24), 0);

  auto b = (*file)->tensor("b.f16");
  ASSERT_TRUE(b.is_ok());
  EXPECT_EQ(b->dtype, DType::kF16);
  const auto* bh = static_cast<const uint16_t*>(b->data);
  EXPECT_FLOAT_EQ(f16_to_f32(bh[0]), 0.5f);
  EXPECT_FLOAT_EQ(f16_to_f32(bh[1]), -1.0f);
  EXPECT_FLOAT_EQ(f16_to_f32(bh[2]), 2.0f);

  auto c = (*file)->tensor("c.bf16");
  ASSERT_TRUE(c.is_ok());
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_EQ(c->numel(), 4);
  const auto* ch = static_cast<const uint16_t*>(c->data);
  EXPECT_FLOAT_EQ(bf16_to_f32(ch[1]), -3.0f);
  EXPECT_FLOAT_EQ(bf16_to_f32(ch[2]), 0.125f);

  // Views point into the mapping: asking twice yields the same bytes, not a copy.
  EXPECT_EQ((*file)->tensor("c.bf16")->data, c->data);
}

TEST(Safetensors, empty_tensor_and_empty_file_round_trip) {
  TempDir dir;
  auto path = dir / "e.safetensors";
  ASSERT_TRUE(write_safetensors(path, {{"empty", DType::kF32, {0, 4}, {}}}).is_ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.error();
  EXPECT_EQ((*file)->tensor("empty")->nbytes, 0u);

  ASSERT_TRUE(write_safetensors(dir / "none.safetensors", {}).is_ok());
  EXPECT_TRUE(SafetensorsFile::open(dir / "none.safetensors").is_ok());
}

TEST(Safetensors, writer_rejects_byte_count_that_does_not_match_shape) {
  TempDir dir;
  std::vector<float> v(3);
  Status st = write_safetensors(dir / "x.safetensors", {{"w", DType::kF32, {2, 2}, as_bytes(v)}});
  ASSERT_FALSE(st.is_ok());
  EXPECT_THAT(st.message(), HasSubstr("'w'"));
}

TEST(SafetensorsMalformed, truncated_file_names_file) {
  TempDir dir;
  auto path = dir / "short.safetensors";
  write_bytes(path, std::string("\x10\x00\x00", 3));
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.is_ok());
  EXPECT_THAT(f.error(), AllOf(HasSubstr(path.string()), HasSubstr("truncated")));
}

TEST(SafetensorsMalformed, header_length_past_end_of_file) {
  TempDir dir;
  auto path = dir / "past.safetensors";
  std::string bytes = safetensors_bytes("{}", 0);
  bytes[0] = 100;  // claims 100 header bytes, has 2
  write_bytes(path, bytes);
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.is_ok());
  EXPECT_THAT(f.error(), AllOf(HasSubstr(path.string()), HasSubstr("past the end")));

  // A length near 2^64 must not wrap around.
  std::string huge = bytes;
  for (int i = 0; i < 8; ++i) huge[static_cast<size_t>(i)] = '\xff';
  EXPECT_FALSE(parse_safetensors_header(huge, "huge").is_ok());
}

TEST(SafetensorsMalformed, bad_json_and_non_object_header) {
  TempDir dir;
  std::string path;
  EXPECT_THAT(open_error(dir, "{\"a\": ", 0, &path), AllOf(HasSubstr(path), HasSubstr("not valid JSON")));
  EXPECT_THAT(open_error(dir, "[1, 2, 3]", 0, &path), AllOf(HasSubstr(path), HasSubstr("not a JSON object")));
  EXPECT_THAT(open_error(dir, R"({"w": 5})", 0, &path), AllOf(HasSubstr(path), HasSubstr("'w'")));
}

TEST(SafetensorsMalformed, unknown_dtype_names_tensor_and_dtype) {
  TempDir dir;
  std::string path;
  std::string err = open_error(dir, R"({"layer.ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}})", 16, &path);
  EXPECT_THAT(err, AllOf(HasSubstr(path), HasSubstr("layer.ids"), HasSubstr("I64"), HasSubstr("BF16")));
}

TEST(SafetensorsMalformed, offsets_out_of_range) {
  TempDir dir;
  std::string path;
  std::string err = open_error(dir, R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8, &path);
  EXPECT_THAT(err, AllOf(HasSubstr(path), HasSubstr("'w'"), HasSubstr("out of range")));
  err = open_error(dir, R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8, &path);
  EXPECT_THAT(err, AllOf(HasSubstr(path), HasSubstr("'w'"), HasSubstr("out of range")));
  err = open_error(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 8, &path);
  EXPECT_THAT(err, AllOf(HasSubstr(path), HasSubstr("'w'"), HasSubstr("data_offsets")));
}

TEST(SafetensorsMalformed, overlapping_tensors_are_both_named) {
  TempDir dir;
  std::string path;
  std::string err = open_error(dir,
                               R"({"first": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                   "second": {"dtype": "F16", "shape": [4], "data_offsets": [8, 16]}})",
                               16, &path);
  EXPECT_THAT(err, AllOf(HasSubstr(path), HasSubstr("first"), HasSubstr("second"), HasSubstr("overlap")));
}

TEST(SafetensorsMalformed, byte_size_must_match_dtype_times_shape) {
  TempDir dir;
  std::string path;
  std::string err = open_error(dir, R"({"w": {"dtype": "BF16", "shape": [3, 2], "data_offsets": [0, 16]}})", 16, &path);
  EXPECT_THAT(err, AllOf(HasSubstr(path), HasSubstr("'w'"), HasSubstr("[3, 2]"), HasSubstr("12")));
}

TEST(SafetensorsMalformed, bad_shapes_and_metadata) {
  TempDir dir;
  std::string path;
  EXPECT_THAT(open_error(dir, R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", 0, &path),
              AllOf(HasSubstr(path), HasSubstr("'w'"), HasSubstr("non-negative")));
  EXPECT_THAT(open_error(dir, R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 0]}})", 0, &path),
              HasSubstr("'w'"));
  EXPECT_THAT(open_error(dir,
                         R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 16],
                                   "data_offsets": [0, 0]}})",
                         0, &path),
              AllOf(HasSubstr("'w'"), HasSubstr("overflows")));
  EXPECT_THAT(open_error(dir, R"({"w": {"dtype": "F32", "data_offsets": [0, 0]}})", 0, &path),
              AllOf(HasSubstr("'w'"), HasSubstr("shape")));
  EXPECT_THAT(open_error(dir, R"({"__metadata__": {"format": 1}})", 0, &path),
              AllOf(HasSubstr(path), HasSubstr("__metadata__")));
}

TEST(SafetensorsMalformed, missing_tensor_names_file_and_tensor) {
  TempDir dir;
  std::vector<float> v(2);
  auto path = dir / "m.safetensors";
  ASSERT_TRUE(write_safetensors(path, {{"present", DType::kF32, {2}, as_bytes(v)}}).is_ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok());
  auto t = (*file)->tensor("absent.weight");
  ASSERT_FALSE(t.is_ok());
  EXPECT_THAT(t.error(), AllOf(HasSubstr(path.string()), HasSubstr("absent.weight")));
}

TEST(SafetensorsMalformed, random_bytes_and_mutations_never_crash) {
  // A small deterministic stand-in for the libFuzzer target, so plain test runs cover it too.
  TempDir dir;
  std::vector<float> v(4, 1.0f);
  ASSERT_TRUE(write_safetensors(dir / "ok.safetensors", {{"w", DType::kF32, {2, 2}, as_bytes(v)}}).is_ok());
  const std::string valid = testing::read_bytes(dir / "ok.safetensors");
  std::mt19937_64 rng(1234);
  int accepted = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string bytes = valid;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    if (iter % 10 == 0) bytes.resize(rng() % (bytes.size() + 1));
    accepted += parse_safetensors_header(bytes, "mutant").is_ok() ? 1 : 0;
  }
  EXPECT_GT(accepted, 0);  // some mutations only touch data bytes or padding
}

TEST(TensorStore, single_file_directory) {
  TempDir dir;
  std::vector<float> v(2, 3.0f);
  ASSERT_TRUE(write_safetensors(dir / "model.safetensors", {{"x", DType::kF32, {2}, as_bytes(v)}}).is_ok());
  auto store = TensorStore::open_dir(dir.path());
  ASSERT_TRUE(store.is_ok()) << store.error();
  EXPECT_TRUE((*store)->contains("x"));
  EXPECT_EQ((*store)->names(), std::vector<std::string>{"x"});
  EXPECT_EQ((*store)->file_of("x"), (dir / "model.safetensors").string());
  EXPECT_FALSE((*store)->tensor("y").is_ok());
}

TEST(TensorStore, empty_directory_is_an_error_naming_it) {
  TempDir dir;
  auto store = TensorStore::open_dir(dir.path());
  ASSERT_FALSE(store.is_ok());
  EXPECT_THAT(store.error(), AllOf(HasSubstr(dir.path().string()), HasSubstr("model.safetensors")));
}

class ShardedStore : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(write_safetensors(dir_ / "model-00001-of-00002.safetensors",
                                  {{"a", DType::kF32, {2}, as_bytes(a_)}, {"b", DType::kF32, {2}, as_bytes(b_)}})
                    .is_ok());
    ASSERT_TRUE(write_safetensors(dir_ / "model-00002-of-00002.safetensors", {{"c", DType::kBF16, {3}, as_bytes(c_)}})
                    .is_ok());
  }
  void write_index(const std::string& weight_map) {
    write_bytes(dir_ / "model.safetensors.index.json",
                R"({"metadata": {"total_size": 22}, "weight_map": )" + weight_map + "}");
  }

  TempDir dir_;
  std::vector<float> a_ = {1, 2}, b_ = {3, 4};
  std::vector<uint16_t> c_ = {f32_to_bf16(5), f32_to_bf16(6), f32_to_bf16(7)};
};

TEST_F(ShardedStore, index_maps_every_tensor_to_its_shard) {
  write_index(R"({"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                  "c": "model-00002-of-00002.safetensors"})");
  auto store = TensorStore::open_dir(dir_.path());
  ASSERT_TRUE(store.is_ok()) << store.error();
  EXPECT_EQ((*store)->names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ((*store)->file_of("c"), (dir_ / "model-00002-of-00002.safetensors").string());
  auto c = (*store)->tensor("c");
  ASSERT_TRUE(c.is_ok());
  EXPECT_FLOAT_EQ(bf16_to_f32(static_cast<const uint16_t*>(c->data)[2]), 7.0f);
  auto b = (*store)->tensor("b");
  ASSERT_TRUE(b.is_ok());
  EXPECT_FLOAT_EQ(static_cast<const float*>(b->data)[1], 4.0f);
}

TEST_F(ShardedStore, missing_shard_file_is_named) {
  write_index(R"({"a": "model-00001-of-00002.safetensors", "z": "model-00009-of-00009.safetensors"})");
  auto store = TensorStore::open_dir(dir_.path());
  ASSERT_FALSE(store.is_ok());
  EXPECT_THAT(store.error(), AllOf(HasSubstr("model-00009-of-00009.safetensors"), HasSubstr("'z'"),
                                   HasSubstr("model.safetensors.index.json")));
}

TEST_F(ShardedStore, tensor_missing_from_its_shard_is_named) {
  write_index(R"({"a": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"})");
  auto store = TensorStore::open_dir(dir_.path());
  ASSERT_FALSE(store.is_ok());
  EXPECT_THAT(store.error(), AllOf(HasSubstr("model-00001-of-00002.safetensors"), HasSubstr("'c'")));
}

TEST_F(ShardedStore, shard_outside_directory_is_rejected) {
  write_index(R"({"a": "../model-00001-of-00002.safetensors"})");
  auto store = TensorStore::open_dir(dir_.path());
  ASSERT_FALSE(store.is_ok());
  EXPECT_THAT(store.error(), HasSubstr("'a'"));
}

TEST_F(ShardedStore, malformed_index_is_named) {
  write_bytes(dir_ / "model.safetensors.index.json", "{\"weight_map\": [");
  auto store = TensorStore::open_dir(dir_.path());
  ASSERT_FALSE(store.is_ok());
  EXPECT_THAT(store.error(), HasSubstr("model.safetensors.index.json"));
}

}  // namespace
}  // namespace mpserve::model
