// Native bridge between a Verilated design and the simulated PCI platform (sim/rtl/bridge.py).
//
// Built by sim/rtl/build.py together with the design into one shared library that Python loads
// with ctypes (every call releases the GIL). The design has the bus ports of models/rtl:
//
//   s_axil_*  BAR accesses: an AXI4-Lite master here runs queued reads and writes, from Python
//             and from doorbell eventfds polled here (ioeventfd), so kicks need no Python
//   m_axi_*   DMA: an AXI4 slave here serves every burst from guest memory through a table of
//             IOMMU mappings (iova -> mmap of the guest memory fd, permission); an access outside
//             them, against their permission or with bus mastering off is answered SLVERR and
//             recorded as a fault for Python's IOMMU fault list: never a silent read. So is a beat
//             that touched a page whose file the frontend truncated: the process's SIGBUS guard
//             (backend/sigbus_guard.py) replaces the page and sets the mapping's flag, read here
//             after each access (one load), and the mapping faults from then on
//   s_axis_*  frames from the wire (a FIFO Python fills), m_axis_* frames to the wire (collected)
//   irq_*     MSI-X vector requests, queued for Python (it owns the MSI-X table); intx level
//
// The design-specific part (idle test, status ports) comes from vb_design.h on the include path.
// One Bridge is used by one thread at a time (Python holds a lock), except vb_wait, which only
// polls file descriptors (the kick list is guarded by its own mutex).

#include "vb_design.h"

#include <verilated.h>
#if VM_TRACE
#include <verilated_fst_c.h>
#endif

#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <type_traits>
#include <vector>

namespace {

// ---- signal access for any data width ---------------------------------------------------------

template <typename T>
typename std::enable_if<std::is_integral<T>::value>::type put_bytes(T& sig, const uint8_t* src, unsigned n) {
  T v = 0;
  std::memcpy(&v, src, std::min<unsigned>(n, sizeof(T)));  // little-endian host, lane 0 = low byte
  sig = v;
}

template <std::size_t N>
void put_bytes(VlWide<N>& sig, const uint8_t* src, unsigned n) {
  for (std::size_t i = 0; i < N; i++) {
    uint32_t w = 0;
    if (4 * i < n) std::memcpy(&w, src + 4 * i, std::min<unsigned>(4, n - 4 * i));
    sig[i] = w;
  }
}

template <typename T>
typename std::enable_if<std::is_integral<T>::value>::type get_bytes(const T& sig, uint8_t* dst, unsigned n) {
  T v = sig;
  std::memcpy(dst, &v, std::min<unsigned>(n, sizeof(T)));
}

template <std::size_t N>
void get_bytes(const VlWide<N>& sig, uint8_t* dst, unsigned n) {
  for (std::size_t i = 0; i < N && 4 * i < n; i++) {
    uint32_t w = sig[i];
    std::memcpy(dst + 4 * i, &w, std::min<unsigned>(4, n - 4 * i));
  }
}

// AXI data bytes: the data ports are as wide as DATA_W; strobes and tkeep (one bit a lane) must fit 64 bits
constexpr unsigned DATA_BYTES = sizeof(VbTop::m_axi_wdata);
static_assert(DATA_BYTES >= 4 && DATA_BYTES <= 64, "the bridge serves DATA_W 32..512");

enum Perm { PERM_READ = 1, PERM_WRITE = 2 };
enum FaultReason { FAULT_UNMAPPED = 1, FAULT_PERM = 2, FAULT_MASTER = 3, FAULT_SPACE = 4, FAULT_GONE = 5 };
enum Event { EV_FRAMES = 1, EV_IRQS = 2, EV_FAULTS = 4, EV_INTX = 8, EV_ERRORS = 16 };
enum RunResult { RUN_IDLE = 1, RUN_EVENTS = 2, RUN_CYCLES = 4, RUN_STUCK = 8 };

constexpr uint64_t KICK_POLL = 256;   // cycles between doorbell eventfd polls while running
constexpr int IDLE_CYCLES = 4;        // idle cycles in a row before the clock stops
constexpr size_t RX_FIFO_FRAMES = 1024;
constexpr uint64_t AXIL_TIMEOUT = 1000000;

struct Mapping {
  uint64_t iova, size;
  uint8_t* host;
  int perm;
  const uint64_t* gone;  // the SIGBUS guard's flag for this mapping (nullptr: unguarded)
};

struct Fault {
  uint64_t iova, size;
  int access, reason;
};

struct Kick {
  int fd;
  uint32_t addr, value;
  int width;
  bool dead;
};

struct AxilReq {
  bool write;
  uint32_t addr, data, strb;
  uint64_t id;
};

struct Frame {
  std::vector<uint8_t> data;
  uint32_t dest;
};

typedef void (*ObserveFn)(int perm, uint64_t iova, uint64_t size);

}  // namespace

struct Bridge {
  VerilatedContext ctx;
  VbTop* top;
  unsigned w;  // AXI data bytes
  uint64_t cycles = 0;
  uint64_t busy_ns = 0;
#if VM_TRACE
  VerilatedFstC* tfp = nullptr;
#endif
  // inputs Python controls
  bool bus_master = false;
  // IOMMU
  std::vector<Mapping> maps;  // sorted by iova
  std::vector<Fault> faults;
  ObserveFn observe = nullptr;
  // AXI4 slave: read channel
  bool rd_active = false, rd_fault = false;
  uint64_t rd_addr = 0;
  uint8_t* rd_host = nullptr;  // the burst's bytes, translated once at AR (nullptr: look up per beat)
  const uint64_t* rd_gone = nullptr;  // the guard's flag of rd_host's mapping
  unsigned rd_left = 0;
  // write channel
  bool wr_active = false, wr_resp = false, wr_fault = false;
  uint64_t wr_addr = 0;
  unsigned wr_beats = 0;
  uint8_t wr_data[256 * 64];  // one burst: at most 256 beats of 64 bytes
  uint8_t wr_strb[256 * 64];
  size_t wr_len = 0;
  // AXI4-Lite master
  std::deque<AxilReq> axil_q;
  bool axil_busy = false, axil_aw = false, axil_w = false, axil_ar = false;
  AxilReq axil_cur{};
  uint64_t axil_next_id = 1, axil_done_id = 0;
  uint32_t axil_rdata = 0;
  // doorbells
  std::mutex kick_mu;
  std::vector<Kick> kicks;
  int wake_fd = -1;
  uint64_t kicks_seen = 0;
  // streams
  std::deque<Frame> rx_fifo;
  size_t rx_pos = 0;
  uint64_t rx_fifo_drops = 0;
  std::vector<uint8_t> tx_cur;
  std::deque<Frame> tx_out;
  // interrupts and status
  std::vector<uint16_t> irqs;
  bool intx = false;
  uint64_t err_count = 0;
  int events = 0;
  int idle_run = 0;
};

namespace {

void dump(Bridge* b, uint64_t t) {
#if VM_TRACE
  if (b->tfp) b->tfp->dump(t);
#else
  (void)b;
  (void)t;
#endif
}

// ---- IOMMU -----------------------------------------------------------------------------------

const Mapping* find_map(Bridge* b, uint64_t lo, uint64_t hi_incl) {
  auto it = std::upper_bound(b->maps.begin(), b->maps.end(), lo,
                             [](uint64_t v, const Mapping& m) { return v < m.iova; });
  if (it == b->maps.begin()) return nullptr;
  --it;
  if (lo < it->iova || hi_incl - it->iova >= it->size) return nullptr;
  return &*it;
}

// The guard's handler runs on this thread, inside the access: a compiler fence keeps the load after it.
bool gone(const uint64_t* flag) {
  if (flag == nullptr) return false;
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  return __atomic_load_n(flag, __ATOMIC_RELAXED) != 0;
}

void record_fault(Bridge* b, uint64_t iova, uint64_t size, int perm, int reason) {
  b->faults.push_back(Fault{iova, size, perm, reason});
  b->events |= EV_FAULTS;
}

// nullptr and a recorded fault when [iova, iova+size) is not inside one mapping with `perm`
// (`flag`, when given, gets the mapping's truncation flag, to read after the access)
uint8_t* translate(Bridge* b, uint64_t iova, uint64_t size, int perm, const uint64_t** flag = nullptr) {
  int reason = 0;
  uint8_t* host = nullptr;
  if (!b->bus_master) {
    reason = FAULT_MASTER;
  } else if (size == 0 || iova + size - 1 < iova) {
    reason = FAULT_SPACE;
  } else {
    const Mapping* m = find_map(b, iova, iova + size - 1);
    if (m == nullptr) {
      // a range touching a mapping partly is still unmapped at its first missing byte
      reason = FAULT_UNMAPPED;
    } else if (!(m->perm & perm)) {
      reason = FAULT_PERM;
    } else if (gone(m->gone)) {
      reason = FAULT_GONE;
    } else {
      host = m->host + (iova - m->iova);
      if (flag) *flag = m->gone;
    }
  }
  if (host == nullptr) record_fault(b, iova, size, perm, reason);
  return host;
}

// Guest memory stores in the widest naturally aligned pieces: a driver polling a 16-bit ring index
// must never see half of a new value.
void store(uint8_t* dst, const uint8_t* src, unsigned n) {
  uintptr_t a = reinterpret_cast<uintptr_t>(dst);
  if (n == 2 && !(a & 1)) {
    uint16_t v;
    std::memcpy(&v, src, 2);
    __atomic_store_n(reinterpret_cast<uint16_t*>(dst), v, __ATOMIC_RELAXED);
  } else if (n == 4 && !(a & 3)) {
    uint32_t v;
    std::memcpy(&v, src, 4);
    __atomic_store_n(reinterpret_cast<uint32_t*>(dst), v, __ATOMIC_RELAXED);
  } else if (n == 8 && !(a & 7)) {
    uint64_t v;
    std::memcpy(&v, src, 8);
    __atomic_store_n(reinterpret_cast<uint64_t*>(dst), v, __ATOMIC_RELAXED);
  } else {
    std::memcpy(dst, src, n);
  }
}

// ---- doorbells -------------------------------------------------------------------------------

void axil_enqueue(Bridge* b, bool write, uint32_t addr, uint32_t data, uint32_t strb, uint64_t* id) {
  AxilReq r{write, addr, data, strb, b->axil_next_id++};
  if (id) *id = r.id;
  b->axil_q.push_back(r);
}

// Doorbell eventfds that fired become AXI4-Lite writes of their value (what KVM's ioeventfd and
// VFIO_DEVICE_IOEVENTFD do for a real function). Only this thread reads them.
void poll_kicks(Bridge* b) {
  size_t n = b->kicks.size();
  if (n == 0) return;
  pollfd pf[64];
  size_t m = 0;
  size_t idx[64];
  for (size_t i = 0; i < n && m < 64; i++) {
    if (b->kicks[i].dead) continue;
    pf[m].fd = b->kicks[i].fd;
    pf[m].events = POLLIN;
    pf[m].revents = 0;
    idx[m++] = i;
  }
  if (m == 0 || poll(pf, m, 0) <= 0) return;
  for (size_t j = 0; j < m; j++) {
    Kick& k = b->kicks[idx[j]];
    if (pf[j].revents & (POLLNVAL | POLLERR)) {
      k.dead = true;
      continue;
    }
    if (!(pf[j].revents & POLLIN)) continue;
    uint64_t v;
    if (read(k.fd, &v, sizeof v) != sizeof v) continue;
    unsigned off = k.addr & 3;
    uint32_t strb = ((1u << k.width) - 1) << off;
    axil_enqueue(b, true, k.addr & ~3u, k.value << (8 * off), strb, nullptr);
    b->kicks_seen++;
  }
}

// ---- one clock cycle -------------------------------------------------------------------------

// The design's bus inputs, as the bus models' state says (after clear_buses: no valid, ready for a new
// AR/AW, a frame out and an interrupt request).
void drive_inputs(Bridge* b) {
  VbTop* t = b->top;
  const unsigned w = b->w;
  uint8_t beat[128];
  t->m_axi_arready = !b->rd_active;
  t->m_axi_rvalid = b->rd_active;
  if (b->rd_active) {
    const uint64_t* flag = b->rd_gone;
    if (b->rd_fault) {
      std::memset(beat, 0, w);
    } else if (b->rd_host) {
      std::memcpy(beat, b->rd_host, w);
    } else {
      const Mapping* m = find_map(b, b->rd_addr, b->rd_addr + w - 1);
      flag = m ? m->gone : nullptr;
      if (m && !gone(flag)) std::memcpy(beat, m->host + (b->rd_addr - m->iova), w);
      else std::memset(beat, 0, w);  // unmapped during the burst (checked whole at AR): reads as 0
    }
    if (!b->rd_fault && gone(flag)) {
      // the beat read a page the guard put in place of one truncated away: its zeros are not data
      record_fault(b, b->rd_addr, w, PERM_READ, FAULT_GONE);
      b->rd_fault = true;
      std::memset(beat, 0, w);
    }
    put_bytes(t->m_axi_rdata, beat, w);
    t->m_axi_rresp = b->rd_fault ? 2 : 0;  // SLVERR
    t->m_axi_rlast = b->rd_left == 1;
  }
  t->m_axi_awready = !b->wr_active;
  t->m_axi_wready = b->wr_active && !b->wr_resp;
  t->m_axi_bvalid = b->wr_resp;
  t->m_axi_bresp = b->wr_fault ? 2 : 0;

  const bool have_rx = !b->rx_fifo.empty();
  t->s_axis_tvalid = have_rx;
  if (have_rx) {
    Frame& f = b->rx_fifo.front();
    size_t left = f.data.size() - b->rx_pos;
    unsigned n = unsigned(std::min<size_t>(left, w));
    std::memset(beat, 0, w);
    if (n) std::memcpy(beat, f.data.data() + b->rx_pos, n);
    put_bytes(t->s_axis_tdata, beat, w);
    t->s_axis_tkeep = n >= 64 ? ~uint64_t(0) : (uint64_t(1) << n) - 1;
    t->s_axis_tlast = left <= w;
    t->s_axis_tdest = f.dest;
  }
  t->m_axis_tready = 1;
  t->irq_ready = 1;

  const AxilReq& c = b->axil_cur;
  t->s_axil_awvalid = b->axil_busy && c.write && !b->axil_aw;
  t->s_axil_awaddr = c.addr;
  t->s_axil_wvalid = b->axil_busy && c.write && !b->axil_w;
  t->s_axil_wdata = c.data;
  t->s_axil_wstrb = c.strb;
  t->s_axil_bready = b->axil_busy && c.write;
  t->s_axil_arvalid = b->axil_busy && !c.write && !b->axil_ar;
  t->s_axil_araddr = c.addr;
  t->s_axil_rready = b->axil_busy && !c.write;
}


void step(Bridge* b) {
  VbTop* t = b->top;
  const unsigned w = b->w;
  uint8_t beat[128];

  // ---- the bus models take the transfers of the coming rising edge, read from the design's outputs as
  // they settled after the previous falling edge (nothing here changes an input before the edge) ----
  if (t->m_axi_arvalid && t->m_axi_arready) {
    b->rd_active = true;
    b->rd_addr = t->m_axi_araddr & ~uint64_t(w - 1);
    b->rd_left = t->m_axi_arlen + 1;
    uint64_t size = uint64_t(b->rd_left) * w;
    b->rd_gone = nullptr;
    b->rd_host = translate(b, b->rd_addr, size, PERM_READ, &b->rd_gone);
    b->rd_fault = b->rd_host == nullptr;
    if (b->observe && !b->rd_fault) b->observe(PERM_READ, b->rd_addr, size);
  }
  if (t->m_axi_rvalid && t->m_axi_rready) {
    b->rd_addr += w;
    if (b->rd_host) b->rd_host += w;
    if (--b->rd_left == 0) b->rd_active = false;
  }
  if (t->m_axi_awvalid && t->m_axi_awready) {
    b->wr_active = true;
    b->wr_resp = false;
    b->wr_addr = t->m_axi_awaddr & ~uint64_t(w - 1);
    b->wr_beats = t->m_axi_awlen + 1;
  }
  const bool w_hs = t->m_axi_wvalid && t->m_axi_wready;
  if (w_hs) {
    get_bytes(t->m_axi_wdata, beat, w);
    uint64_t strb = t->m_axi_wstrb;
    if (b->wr_len + w <= sizeof b->wr_data) {
      std::memcpy(b->wr_data + b->wr_len, beat, w);
      for (unsigned k = 0; k < w; k++) b->wr_strb[b->wr_len + k] = (strb >> k) & 1;
      b->wr_len += w;
    }
  }
  if (w_hs && t->m_axi_wlast) {
    // the whole burst is here: check the bytes it strobes, then store them (or nothing)
    size_t n = b->wr_len;
    size_t first = n, last = 0;
    for (size_t i = 0; i < n; i++)
      if (b->wr_strb[i]) { first = std::min(first, i); last = i; }
    b->wr_fault = false;
    if (first < n) {
      uint64_t lo = b->wr_addr + first, size = last - first + 1;
      const uint64_t* flag = nullptr;
      uint8_t* host = translate(b, lo, size, PERM_WRITE, &flag);
      if (host == nullptr) {
        b->wr_fault = true;
      } else {
        // observers see a write before it lands (a monitor snapshots what it overwrites)
        if (b->observe) b->observe(PERM_WRITE, lo, size);
        size_t i = first;
        while (i <= last) {
          if (!b->wr_strb[i]) { i++; continue; }
          size_t j = i;
          while (j <= last && b->wr_strb[j]) j++;
          store(host + (i - first), &b->wr_data[i], unsigned(j - i));
          i = j;
        }
        __atomic_thread_fence(__ATOMIC_RELEASE);
        if (gone(flag)) {  // a page of it went with the file: the stores landed on the guard's private page
          record_fault(b, lo, size, PERM_WRITE, FAULT_GONE);
          b->wr_fault = true;
        }
      }
    }
    b->wr_len = 0;
    b->wr_resp = true;
  }
  if (t->m_axi_bvalid && t->m_axi_bready) {
    b->wr_active = false;
    b->wr_resp = false;
  }
  if (t->s_axis_tvalid && t->s_axis_tready) {
    Frame& f = b->rx_fifo.front();
    b->rx_pos += w;
    if (b->rx_pos >= f.data.size()) {
      b->rx_fifo.pop_front();
      b->rx_pos = 0;
    }
  }
  if (t->m_axis_tvalid && t->m_axis_tready) {
    get_bytes(t->m_axis_tdata, beat, w);
    uint64_t keep = t->m_axis_tkeep;
    for (unsigned k = 0; k < w; k++)
      if ((keep >> k) & 1) b->tx_cur.push_back(beat[k]);
    if (t->m_axis_tlast) {
      b->tx_out.push_back(Frame{std::move(b->tx_cur), uint32_t(t->m_axis_tdest)});
      b->tx_cur.clear();
      b->events |= EV_FRAMES;
    }
  }
  if (t->irq_valid && t->irq_ready) {
    b->irqs.push_back(t->irq_vector);
    b->events |= EV_IRQS;
  }
  // AXI4-Lite master
  if (b->axil_busy) {
    if (t->s_axil_awvalid && t->s_axil_awready) b->axil_aw = true;
    if (t->s_axil_wvalid && t->s_axil_wready) b->axil_w = true;
    if (t->s_axil_arvalid && t->s_axil_arready) b->axil_ar = true;
    const bool read_done = t->s_axil_rvalid && t->s_axil_rready;
    if (read_done || (t->s_axil_bvalid && t->s_axil_bready)) {
      if (read_done) b->axil_rdata = t->s_axil_rdata;
      b->axil_done_id = b->axil_cur.id;
      b->axil_busy = false;
    }
  }
  if (!b->axil_busy && !b->axil_q.empty()) {
    b->axil_cur = b->axil_q.front();
    b->axil_q.pop_front();
    b->axil_busy = true;
    b->axil_aw = b->axil_w = b->axil_ar = false;
  }

  // rising edge, then the inputs of the next cycle
  t->clk = 1;
  t->eval();
  dump(b, 2 * b->cycles + 1);
  drive_inputs(b);

  // falling edge: the new inputs settle
  t->clk = 0;
  t->eval();
  dump(b, 2 * b->cycles + 2);
  b->cycles++;

  if (bool(t->intx) != b->intx) {
    b->intx = t->intx;
    b->events |= EV_INTX;
  }
  uint64_t errs = t->err_count;
  if (errs != b->err_count) {
    b->err_count = errs;
    b->events |= EV_ERRORS;
  }
}

bool bridge_idle(Bridge* b) {
  return !b->rd_active && !b->wr_active && !b->axil_busy && b->axil_q.empty() && b->rx_fifo.empty()
      && b->tx_cur.empty() && vb_design_idle(b->top);
}

void clear_buses(Bridge* b) {
  b->rd_active = b->wr_active = b->wr_resp = false;
  b->wr_len = 0;
  b->rd_host = nullptr;
  b->rd_gone = nullptr;
  b->axil_q.clear();
  b->axil_busy = false;
  b->axil_done_id = b->axil_next_id - 1;
  b->rx_fifo.clear();
  b->rx_pos = 0;
  b->tx_cur.clear();
  drive_inputs(b);
}

}  // namespace

extern "C" {

Bridge* vb_new(const char* wave_path) {
  Bridge* b = new Bridge();
  b->ctx.randReset(0);
  b->top = new VbTop(&b->ctx, "top");
  b->w = DATA_BYTES;
#if VM_TRACE
  if (wave_path && *wave_path) {
    b->ctx.traceEverOn(true);
    b->tfp = new VerilatedFstC();
    b->top->trace(b->tfp, 99);
    b->tfp->open(wave_path);
  }
#else
  (void)wave_path;
#endif
  VbTop* t = b->top;
  t->clk = 0;
  t->rst_n = 0;
  t->link_up = 1;
  t->msix_enabled = 0;
  clear_buses(b);
  t->eval();
  return b;
}

int vb_has_trace(void) { return VM_TRACE; }

void vb_free(Bridge* b) {
  if (!b) return;
  // final() runs on the calling thread, whose Verilator "current context" may still name a context
  // already freed (a device evaluated and freed earlier on this thread): point it at this one.
  Verilated::threadContextp(&b->ctx);
  b->top->final();
#if VM_TRACE
  if (b->tfp) {
    b->tfp->close();
    delete b->tfp;
  }
#endif
  for (auto& m : b->maps) munmap(m.host, m.size);
  delete b->top;
  delete b;
}

unsigned vb_width(Bridge* b) { return b->w; }

// Function-level reset: rst_n low for `cycles` cycles; the bus models forget everything in flight.
void vb_reset(Bridge* b, int cycles) {
  VbTop* t = b->top;
  clear_buses(b);
  t->rst_n = 0;
  for (int i = 0; i < cycles; i++) {
    t->clk = 1;
    t->eval();
    dump(b, 2 * b->cycles + 1);
    t->clk = 0;
    t->eval();
    dump(b, 2 * b->cycles + 2);
    b->cycles++;
  }
  t->rst_n = 1;
  t->eval();
  if (bool(t->intx) != b->intx) b->events |= EV_INTX;
  if (uint64_t(t->err_count) != b->err_count) b->events |= EV_ERRORS;  // Python's count restarts too
  b->intx = t->intx;
  b->err_count = t->err_count;
  b->idle_run = 0;
  b->irqs.clear();  // requests the function made before the reset are gone with its state
  b->events &= ~EV_IRQS;
}

void vb_set_link(Bridge* b, int up) { b->top->link_up = up ? 1 : 0; }
void vb_set_msix_enabled(Bridge* b, int on) { b->top->msix_enabled = on ? 1 : 0; }
void vb_set_bus_master(Bridge* b, int on) { b->bus_master = on != 0; }
void vb_set_observer(Bridge* b, ObserveFn fn) { b->observe = fn; }
void vb_set_wake_fd(Bridge* b, int fd) { b->wake_fd = fd; }

int vb_dma_map(Bridge* b, uint64_t iova, uint64_t size, int fd, int64_t offset, int perm) {
  if (size == 0 || iova + size - 1 < iova) return -EINVAL;
  for (auto& m : b->maps)
    if (iova < m.iova + m.size && m.iova < iova + size) return -EEXIST;
  int prot = PROT_READ | ((perm & PERM_WRITE) ? PROT_WRITE : 0);
  void* p = mmap(nullptr, size, prot, MAP_SHARED, fd, offset);
  if (p == MAP_FAILED) return -errno;
  Mapping m{iova, size, static_cast<uint8_t*>(p), perm, nullptr};
  auto it = std::upper_bound(b->maps.begin(), b->maps.end(), iova,
                             [](uint64_t v, const Mapping& x) { return v < x.iova; });
  b->maps.insert(it, m);
  return 0;
}

// The host address of the mapping at `iova` (0: none), for Python to guard it.
uint64_t vb_dma_host(Bridge* b, uint64_t iova) {
  for (auto& m : b->maps)
    if (m.iova == iova) return reinterpret_cast<uint64_t>(m.host);
  return 0;
}

// The SIGBUS guard's flag for the mapping at `iova` (SigbusGuard.fault_flag): set, the mapping faults.
int vb_dma_guard(Bridge* b, uint64_t iova, const uint64_t* flag) {
  for (auto& m : b->maps)
    if (m.iova == iova) {
      m.gone = flag;
      return 0;
    }
  return -ENOENT;
}

// Removes every mapping inside [iova, iova+size) (Python's IOMMU has refused partial overlaps).
int vb_dma_unmap(Bridge* b, uint64_t iova, uint64_t size) {
  int n = 0;
  b->rd_host = nullptr;  // a burst in progress looks its pages up again, beat by beat
  b->rd_gone = nullptr;
  uint64_t end = iova + size;  // may wrap to 0 for the whole space
  for (auto it = b->maps.begin(); it != b->maps.end();) {
    bool inside = it->iova >= iova && (end == 0 || it->iova + it->size <= end);
    if (inside) {
      munmap(it->host, it->size);
      it = b->maps.erase(it);
      n++;
    } else {
      ++it;
    }
  }
  return n;
}

int vb_kick_add(Bridge* b, int fd, uint32_t addr, uint32_t value, int width) {
  if (width != 1 && width != 2 && width != 4) return -EINVAL;
  if ((addr & 3) + width > 4) return -EINVAL;
  std::lock_guard<std::mutex> g(b->kick_mu);
  if (b->kicks.size() >= 64) return -ENOSPC;
  b->kicks.push_back(Kick{fd, addr, value, width, false});
  return 0;
}

int vb_kick_remove(Bridge* b, int fd, uint32_t addr) {
  std::lock_guard<std::mutex> g(b->kick_mu);
  auto before = b->kicks.size();
  b->kicks.erase(std::remove_if(b->kicks.begin(), b->kicks.end(),
                                [&](const Kick& k) { return k.fd == fd && k.addr == addr; }),
                 b->kicks.end());
  return int(before - b->kicks.size());
}

// Blocks until a doorbell eventfd or the wake eventfd is readable, or `timeout_ms` (-1: no limit).
// Touches no model state: the caller does not hold the bridge lock while it waits.
int vb_wait(Bridge* b, int timeout_ms) {
  pollfd pf[65];
  size_t n = 0;
  {
    std::lock_guard<std::mutex> g(b->kick_mu);
    for (auto& k : b->kicks)
      if (!k.dead && n < 64) pf[n++] = pollfd{k.fd, POLLIN, 0};
  }
  if (b->wake_fd >= 0) pf[n++] = pollfd{b->wake_fd, POLLIN, 0};
  int r = poll(pf, n, timeout_ms);
  if (r > 0 && b->wake_fd >= 0 && (pf[n - 1].revents & POLLIN)) {
    uint64_t v;
    ssize_t got = read(b->wake_fd, &v, sizeof v);
    (void)got;
  }
  return r < 0 ? -errno : r;
}

// Runs the clock until the design is idle (RUN_IDLE), `max_cycles` passed (RUN_CYCLES), or events
// for Python have waited `event_delay` cycles (RUN_EVENTS is or-ed in whenever events are pending).
int vb_run(Bridge* b, uint64_t max_cycles, uint64_t event_delay) {
  auto t0 = std::chrono::steady_clock::now();
  const uint64_t start = b->cycles;
  uint64_t first_event = b->events ? start : UINT64_MAX;
  int result = RUN_CYCLES;
  while (b->cycles - start < max_cycles) {
    if ((b->cycles & (KICK_POLL - 1)) == 0) poll_kicks(b);
    step(b);
    if (b->events) {
      if (first_event == UINT64_MAX) first_event = b->cycles;
      if (b->cycles - first_event >= event_delay) {
        result = 0;
        break;
      }
    }
    if (bridge_idle(b)) {
      if (++b->idle_run >= IDLE_CYCLES) {
        poll_kicks(b);  // a doorbell that arrived since the last poll is work
        if (b->axil_q.empty()) {
          result = RUN_IDLE;
          break;
        }
        b->idle_run = 0;
      }
    } else {
      b->idle_run = 0;
    }
  }
  b->busy_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  return result | (b->events ? RUN_EVENTS : 0) | (b->idle_run >= IDLE_CYCLES ? RUN_IDLE : 0);
}

// One AXI4-Lite access from Python, run to its response (the design keeps running meanwhile, so
// DMA and doorbells are served as they would be). Returns the cycles it took, -1 on a hung bus.
// `state` gets the pending events, | 0x100 when the design stayed idle for IDLE_CYCLES after the
// response (then nothing needs the clock thread).
int64_t vb_axil(Bridge* b, int write, uint32_t addr, uint32_t data, uint32_t strb, uint32_t* rdata, int* state) {
  auto t0 = std::chrono::steady_clock::now();
  uint64_t id;
  axil_enqueue(b, write != 0, addr, data, strb, &id);
  const uint64_t start = b->cycles;
  while (b->axil_done_id < id) {
    if (b->cycles - start >= AXIL_TIMEOUT) return -1;
    if ((b->cycles & (KICK_POLL - 1)) == 0) poll_kicks(b);
    step(b);
  }
  if (rdata) *rdata = b->axil_rdata;
  b->idle_run = 0;
  while (bridge_idle(b) && b->idle_run < IDLE_CYCLES) {
    step(b);
    b->idle_run = bridge_idle(b) ? b->idle_run + 1 : 0;
  }
  if (state) *state = b->events | (b->idle_run >= IDLE_CYCLES ? 0x100 : 0);
  b->busy_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  return int64_t(b->cycles - start);
}

int vb_push_frame(Bridge* b, const uint8_t* data, uint32_t len, uint32_t dest) {
  if (b->rx_fifo.size() >= RX_FIFO_FRAMES) {
    b->rx_fifo_drops++;
    return -1;
  }
  b->rx_fifo.push_back(Frame{std::vector<uint8_t>(data, data + len), dest});
  b->idle_run = 0;
  return 0;
}

// Frames the design transmitted, back to back into buf; returns how many were taken.
int vb_pop_frames(Bridge* b, uint8_t* buf, uint64_t cap, uint32_t* lens, uint32_t* dests, int max) {
  int n = 0;
  uint64_t used = 0;
  while (n < max && !b->tx_out.empty()) {
    Frame& f = b->tx_out.front();
    if (used + f.data.size() > cap) break;
    std::memcpy(buf + used, f.data.data(), f.data.size());
    used += f.data.size();
    lens[n] = uint32_t(f.data.size());
    dests[n] = f.dest;
    n++;
    b->tx_out.pop_front();
  }
  if (b->tx_out.empty()) b->events &= ~EV_FRAMES;
  return n;
}

int vb_pop_irqs(Bridge* b, uint16_t* out, int max) {
  int n = std::min<int>(max, int(b->irqs.size()));
  std::copy(b->irqs.begin(), b->irqs.begin() + n, out);
  b->irqs.erase(b->irqs.begin(), b->irqs.begin() + n);
  if (b->irqs.empty()) b->events &= ~EV_IRQS;
  return n;
}

int vb_pop_faults(Bridge* b, uint64_t* iova, uint64_t* size, int* access, int* reason, int max) {
  int n = std::min<int>(max, int(b->faults.size()));
  for (int i = 0; i < n; i++) {
    iova[i] = b->faults[i].iova;
    size[i] = b->faults[i].size;
    access[i] = b->faults[i].access;
    reason[i] = b->faults[i].reason;
  }
  b->faults.erase(b->faults.begin(), b->faults.begin() + n);
  if (b->faults.empty()) b->events &= ~EV_FAULTS;
  return n;
}

// Pending events (and clears the level-change ones, which Python reads from vb_status).
int vb_events(Bridge* b) {
  int e = b->events;
  b->events &= ~(EV_INTX | EV_ERRORS);
  return e;
}

// cycles, intx, kicks seen, rx fifo drops, busy ns, then the design's status ports
int vb_status(Bridge* b, uint64_t* out, int n) {
  uint64_t all[5 + VB_DESIGN_STATUS_COUNT];
  all[0] = b->cycles;
  all[1] = b->top->intx;
  all[2] = b->kicks_seen;
  all[3] = b->rx_fifo_drops;
  all[4] = b->busy_ns;
  vb_design_status(b->top, all + 5);
  int m = std::min<int>(n, 5 + VB_DESIGN_STATUS_COUNT);
  std::copy(all, all + m, out);
  return m;
}

// The plain loop: the clock and nothing else (no bus model, no Python), for comparison.
uint64_t vb_bench_plain(Bridge* b, uint64_t cycles) {
  VbTop* t = b->top;
  auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < cycles; i++) {
    t->clk = 1;
    t->eval();
    t->clk = 0;
    t->eval();
  }
  b->cycles += cycles;
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
}

}  // extern "C"
