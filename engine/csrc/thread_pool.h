// The kernels' compute threads: a pool that runs fn(i) for i in [0, n) on the calling thread and
// at::get_num_threads() - 1 workers, each taking the next index from one shared counter.
//
// Why not at::parallel_for (OpenMP): a decode step is ~200 small parallel regions (every linear
// of every layer), and an OpenMP region splits its range evenly up front and ends at a barrier
// that waits for every thread. On a machine whose cores are also running the server (the event
// loop, the HTTP parsing), a thread the OS has parked holds the whole region up for a time slice:
// a 16 ms SmolLM2 step measured 1.7 s under load. Here the caller returns as soon as every index
// has run: a worker that has not woken up yet claims nothing and delays nobody, and the others
// take its share. Which thread runs an index does not change what it computes (each index writes
// its own outputs), so results are the same bits on any number of threads.
//
// Workers spin briefly between jobs (the next linear follows within microseconds during a step)
// and then sleep on a condition variable (between steps the cores belong to Python and the server).
#pragma once

#include <ATen/Parallel.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <utility>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define GQ_PAUSE() _mm_pause()
#else
#define GQ_PAUSE() std::this_thread::yield()
#endif

namespace gq {

class Pool {
 public:
  static Pool& instance() {
    static bool registered = (pthread_atfork(nullptr, nullptr, [] { current() = new Pool(); }), true);
    (void)registered;
    return *current();
  }

  // fn(i) for every i in [0, n), on this thread and the workers; returns when all have run.
  // Nested calls (from inside a task) and calls while another thread's job runs run here, in order.
  template <class F>
  void run(int64_t n, const F& fn) {
    if (n <= 0) return;
    auto here = [&] {
      for (int64_t i = 0; i < n; ++i) fn(i);
    };
    const int64_t threads = at::get_num_threads();
    if (n == 1 || threads <= 1 || in_task()) return here();  // (a task's thread may hold post_mutex_)
    std::unique_lock<std::mutex> owner(post_mutex_, std::try_to_lock);
    if (!owner.owns_lock()) return here();
    resize(threads - 1);
    for (int64_t start = 0; start < n; start += kMaxTasks) {  // the counter holds kMaxTasks at most
      const int64_t count = std::min<int64_t>(kMaxTasks, n - start);
      auto call = [&fn, start](int64_t i) { fn(start + i); };
      post_and_join(count, &invoke<decltype(call)>, &call);
    }
  }

 private:
  // state_: generation (24 bits) | task count (20) | next task (20). One atomic word, so a claim
  // names the job it is for: a worker that slept through a job cannot take a later job's index
  // with the earlier job's function.
  static constexpr int64_t kMaxTasks = (1 << 20) - 1;
  static constexpr int kSlots = 4;  // jobs' functions by generation: a late worker reads a stale slot
                                    // only before its claim fails
  struct Slot {
    void (*fn)(const void*, int64_t) = nullptr;
    const void* ctx = nullptr;
    std::atomic<int64_t> done{0};
    std::exception_ptr error;
  };

  // Never destroyed (workers may still spin at process exit); a forked child, which has none of
  // the parent's threads, starts a pool of its own.
  static Pool*& current() {
    static Pool* pool = new Pool();
    return pool;
  }

  template <class C>
  static void invoke(const void* ctx, int64_t i) {
    (*static_cast<const C*>(ctx))(i);
  }

  static bool& in_task() {
    thread_local bool flag = false;
    return flag;
  }

  static uint64_t gen_of(uint64_t s) { return s >> 40; }
  static int64_t count_of(uint64_t s) { return static_cast<int64_t>((s >> 20) & kMaxTasks); }
  static int64_t next_of(uint64_t s) { return static_cast<int64_t>(s & kMaxTasks); }

  void post_and_join(int64_t count, void (*fn)(const void*, int64_t), const void* ctx) {
    const uint64_t gen = (gen_of(state_.load(std::memory_order_relaxed)) + 1) & ((1u << 24) - 1);
    Slot& slot = slots_[gen % kSlots];
    slot.fn = fn, slot.ctx = ctx;
    slot.done.store(0, std::memory_order_relaxed);
    state_.store((gen << 40) | (static_cast<uint64_t>(count) << 20), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(sleep_mutex_); }
      wake_.notify_all();
    }
    work(gen);
    while (slot.done.load(std::memory_order_acquire) < count) GQ_PAUSE();
    if (slot.error) std::rethrow_exception(std::exchange(slot.error, nullptr));
  }

  // Take and run the tasks of job `gen` until none is left (or a later job has replaced it).
  void work(uint64_t gen) {
    uint64_t s = state_.load(std::memory_order_acquire);
    while (gen_of(s) == gen && next_of(s) < count_of(s)) {
      if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      Slot& slot = slots_[gen % kSlots];  // ours until its last task is done, which needs ours
      in_task() = true;
      try {
        slot.fn(slot.ctx, next_of(s));
      } catch (...) {  // the caller rethrows the first (a worker cannot)
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!slot.error) slot.error = std::current_exception();
      }
      in_task() = false;
      slot.done.fetch_add(1, std::memory_order_release);
      s = state_.load(std::memory_order_acquire);
    }
  }

  void worker_loop() {
    uint64_t seen = gen_of(state_.load(std::memory_order_acquire));
    while (true) {
      uint64_t gen = wait_for_job(seen);
      if (stop_.load(std::memory_order_acquire)) return;
      work(gen);
      seen = gen;
    }
  }

  // Spin ~100 us for the next job, then sleep until one is posted; returns its generation.
  uint64_t wait_for_job(uint64_t seen) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
    for (int spins = 0;; ++spins) {
      const uint64_t gen = gen_of(state_.load(std::memory_order_acquire));
      if (gen != seen || stop_.load(std::memory_order_relaxed)) return gen;
      GQ_PAUSE();
      if ((spins & 63) == 63 && std::chrono::steady_clock::now() > until) break;
    }
    std::unique_lock<std::mutex> lock(sleep_mutex_);
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    uint64_t gen;
    while ((gen = gen_of(state_.load(std::memory_order_seq_cst))) == seen && !stop_.load(std::memory_order_relaxed))
      wake_.wait(lock);
    sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    return gen;
  }

  // The caller holds post_mutex_.
  void resize(int64_t workers) {
    if (static_cast<int64_t>(workers_.size()) == workers) return;
    stop_.store(true, std::memory_order_seq_cst);
    { std::lock_guard<std::mutex> lock(sleep_mutex_); }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_.store(false, std::memory_order_seq_cst);
    for (int64_t i = 0; i < workers; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  std::atomic<uint64_t> state_{0};
  Slot slots_[kSlots];
  std::atomic<bool> stop_{false};
  std::atomic<int> sleepers_{0};
  std::mutex post_mutex_, sleep_mutex_, error_mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
};

// fn(i) for i in [0, n) on the kernels' threads (Pool, above)
template <class F>
inline void parallel_tasks(int64_t n, const F& fn) {
  Pool::instance().run(n, fn);
}

// fn(begin, end) over [0, n) in ranges of `grain` (the last one shorter), one task each
template <class F>
inline void parallel_ranges(int64_t n, int64_t grain, const F& fn) {
  parallel_tasks((n + grain - 1) / grain, [&](int64_t t) { fn(t * grain, std::min(n, (t + 1) * grain)); });
}

}  // namespace gq
