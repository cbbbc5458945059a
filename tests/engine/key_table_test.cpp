// The prefix cache's key table (engine/key_table.h) against std::unordered_map, with keys chosen
// so that probe runs collide, wrap around the end of the table and are cut by erases.
#include "engine/key_table.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <unordered_map>
#include <vector>

namespace mpserve::engine {
namespace {

// Every key of the reference is found with its value, and the sizes agree.
void expect_same(const KeyTable& t, const std::unordered_map<uint64_t, int32_t>& ref) {
  ASSERT_EQ(t.size(), static_cast<int32_t>(ref.size()));
  for (const auto& [k, v] : ref) ASSERT_EQ(t.find(k), v) << "key " << k;
}

TEST(KeyTable, insert_find_and_duplicate_keys) {
  KeyTable t;
  EXPECT_EQ(t.find(42), -1);
  EXPECT_TRUE(t.insert(42, 7));
  EXPECT_FALSE(t.insert(42, 9));  // present: unchanged
  EXPECT_EQ(t.find(42), 7);
  EXPECT_TRUE(t.insert(0, 0));  // key 0 and value 0 are ordinary
  EXPECT_EQ(t.find(0), 0);
  EXPECT_EQ(t.size(), 2);
  t.erase(42);
  EXPECT_EQ(t.find(42), -1);
  EXPECT_EQ(t.find(0), 0);
  EXPECT_EQ(t.size(), 1);
}

// Keys that share their home slot, near the end of the table so their run wraps to slot 0; then
// erases from the middle of the run, each followed by a full check (the backward shift must keep
// every later key reachable, including those whose home is past the hole).
TEST(KeyTable, erase_inside_wrapping_probe_runs_keeps_every_key_reachable) {
  const size_t cap = KeyTable().capacity();
  std::mt19937_64 rng(7);
  for (int round = 0; round < 50; ++round) {
    KeyTable t;
    std::unordered_map<uint64_t, int32_t> ref;
    std::vector<uint64_t> keys;
    for (int i = 0; i < 40; ++i) {
      // homes cap-3 .. cap-1 and 0 .. 1: one long run across the wrap
      const uint64_t home = (cap - 3 + rng() % 5) % cap;
      const uint64_t k = (rng() & ~uint64_t(cap - 1)) | home;
      if (ref.count(k)) continue;
      ASSERT_TRUE(t.insert(k, i));
      ref[k] = i;
      keys.push_back(k);
    }
    expect_same(t, ref);
    std::shuffle(keys.begin(), keys.end(), rng);
    for (uint64_t k : keys) {
      t.erase(k);
      ref.erase(k);
      ASSERT_EQ(t.find(k), -1);
      expect_same(t, ref);
    }
  }
}

// Random inserts and erases past several doublings (every key clustered into few homes, so runs
// are long), checked against the reference after every operation batch.
TEST(KeyTable, random_operations_through_growth_match_unordered_map) {
  std::mt19937_64 rng(1234);
  KeyTable t;
  std::unordered_map<uint64_t, int32_t> ref;
  std::vector<uint64_t> live;
  for (int op = 0; op < 20000; ++op) {
    const bool ins = live.empty() || rng() % 3 != 0;
    if (ins) {
      const uint64_t k = (rng() << 12) | (rng() % 64);  // 64 home slots at every table size
      const int32_t v = static_cast<int32_t>(rng() % 1000000);
      const bool fresh = !ref.count(k);
      ASSERT_EQ(t.insert(k, v), fresh);
      if (fresh) ref[k] = v, live.push_back(k);
    } else {
      const size_t i = rng() % live.size();
      t.erase(live[i]);
      ref.erase(live[i]);
      live[i] = live.back();
      live.pop_back();
    }
    if (op % 1000 == 999) expect_same(t, ref);
  }
  expect_same(t, ref);
  EXPECT_GT(t.capacity(), size_t(1024));  // it grew
  EXPECT_LE(2 * size_t(t.size()), t.capacity());
}

}  // namespace
}  // namespace mpserve::engine
