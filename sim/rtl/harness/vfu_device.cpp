// vfu-device: a described RTL PCI function exported over vfio-user by libvfio-user (nutanix), natively.
//
//   vfu-device SOCKET LAYOUT [--once] [--verbose]
//
// Design-agnostic: everything about the function comes from LAYOUT, a text file written by
// sim/rtl/vfu_export.py from the design description (configuration space image and write mask, BARs,
// slave windows, MSI-X, the PCI configuration access window, status fields, error codes, wire), and from
// the variant's libvbridge.so (the Verilated design and its bus models, sim/rtl/harness/bridge.cpp.j2),
// linked directly. No Python runs in this process.
//
// A libvfio-user context serves one client, and the conformance suite holds several devices open at once (as the
// project's Python server allows): so each client gets a device of its own, a bridge and a context listening on
// SOCKET.d<N>, and the public SOCKET is a symlink to an idle one's, moved on as soon as a client attaches (up to
// 8 devices; an idle one is reused). Per device (one mutex `mu` around every bridge call, as
// sim/rtl/runner.py's lock; `ctx_mu` around its context and PCI state):
//   main    (all devices) poll the contexts' fds, then vfu_run_ctx under `ctx_mu`: configuration space, BAR
//           accesses, DMA map/unmap, SET_IRQS, reset. A client that hangs up leaves a fresh device behind
//           (--once: the process exits 0 then)
//   clock   what RtlRunner._clock does: vb_run in chunks while the design has work, deliver its events
//           (DMA faults into a list, status -> INTx and driver errors, frames back into the receive FIFO on
//           a loopback wire, vector requests -> MSI-X under `ctx_mu`), then vb_wait on the wake eventfd
//   bench   (one for all) SOCKET.bench, vfio-user framing: VERSION, BENCH_DMA_FAULTS, BENCH_PORT (the bench
//           side channel libvfio-user cannot carry); anything else is answered ENOSYS. A connection belongs to
//           the most recently attached device that has none yet (a client opens it right after its VERSION)
//
// libvfio-user handles SET_IRQS itself and tells a device nothing about eventfd bindings; its debug log
// does ("setting IRQ ...", "event fd[i]=N", "disabling IRQ type ..."), so the log callback follows them to
// do what VFIO does on the platform side: a vector bound is unmasked and MSI-X enabled, unbinding the index
// disables MSI-X. INTx and MSI-X vector 0 share one eventfd slot in libvfio-user (the last bound wins).
//
// A client that shrinks a memory file it mapped for DMA (ftruncate after DMA_MAP) must not kill the process with
// every device in it: a SIGBUS inside a DMA mapping is caught (sigbus_guard below, as backend/sigbus_guard.py does
// for Python processes), the page is replaced by an anonymous one so the access completes, and the mapping's flag
// makes the bridge answer that beat SLVERR and record the fault ("memory behind IOVA ... is gone"), which the design
// turns into DEVICE_NEEDS_RESET. A SIGBUS anywhere else still kills the process (a real bug).
//
// Prints "listening on SOCKET" once ready; exits 0 on SIGTERM/SIGINT (or, with --once, when a client hangs
// up); any failure is reported on stderr with a non-zero exit.

// The header is C11: its _Static_assert lines are C++ static_assert.
#define _Static_assert static_assert
#include "libvfio-user.h"
#undef _Static_assert

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

// ---- the bridge's C API (sim/rtl/harness/bridge.cpp.j2) ------------------------------------------------

struct VbBridge;
extern "C" {
VbBridge* vb_new(const char* wave_path);
void vb_free(VbBridge* b);
void vb_reset(VbBridge* b, int cycles);
void vb_set_link(VbBridge* b, int up);
void vb_set_msix_enabled(VbBridge* b, int on);
void vb_set_msix_fmask(VbBridge* b, int on);
void vb_set_bus_master(VbBridge* b, int on);
void vb_set_wake_fd(VbBridge* b, int fd);
int vb_dma_map_host(VbBridge* b, uint64_t iova, uint64_t size, void* host, int perm);
int vb_dma_unmap(VbBridge* b, uint64_t iova, uint64_t size);
int vb_dma_guard(VbBridge* b, uint64_t iova, const uint64_t* flag);
int vb_wait(VbBridge* b, int timeout_ms);
int vb_run(VbBridge* b, uint64_t max_cycles, uint64_t event_delay);
int64_t vb_axil(VbBridge* b, unsigned slave, int write, uint32_t addr, uint32_t data, uint32_t strb, uint32_t* rdata,
                int* state);
int vb_push_frame(VbBridge* b, const uint8_t* data, uint32_t len, uint32_t dest);
int vb_pop_frames(VbBridge* b, uint8_t* buf, uint64_t cap, uint32_t* lens, uint32_t* dests, int max);
int vb_pop_irqs(VbBridge* b, uint16_t* out, int max);
int vb_pop_faults(VbBridge* b, uint64_t* iova, uint64_t* size, int* access, int* reason, int max);
int vb_events(VbBridge* b);
int vb_status(VbBridge* b, uint64_t* out, int n);
}

namespace {

// sim/rtl/bridge.py: Events, RunResult, AXIL_IDLE; sim/rtl/runner.py: CHUNK, EVENT_DELAY
constexpr int EV_FRAMES = 1, EV_IRQS = 2, EV_FAULTS = 4, EV_INTX = 8, EV_ERRORS = 16;
constexpr int RUN_IDLE = 1, RUN_EVENTS = 2;
constexpr int AXIL_IDLE = 0x100;
constexpr uint64_t CHUNK = 1 << 20, EVENT_DELAY = 2048;
// backend/virtio/pci_regs.py
constexpr int CFG_SIZE = 256, CFG_COMMAND = 0x04, CFG_STATUS = 0x06, CFG_BAR0 = 0x10;
constexpr uint16_t CMD_MASTER = 0x4, CMD_INTX_DISABLE = 0x400;
constexpr uint8_t STATUS_INTERRUPT = 0x08;
constexpr uint16_t MSIX_ENABLE = 1 << 15, MSIX_FMASK = 1 << 14;
constexpr int MSIX_ENTRY = 16, MSIX_CTRL = 12;
constexpr uint32_t MSI_ADDRESS = 0xFEE00000u;  // sim/rtl/msix.py (the bridge's MSI window)
// backend/pci/vfio_user_msg.py
constexpr uint16_t CMD_VERSION = 1, CMD_BENCH_DMA_FAULTS = 0xBE02, CMD_BENCH_PORT = 0xBE03;
constexpr uint32_t FLAG_REPLY = 1, FLAG_ERROR = 0x20;
constexpr size_t MAX_PORT_FRAME = 65550, MAX_BENCH_MESSAGE = 16 + 12 + MAX_PORT_FRAME, MAX_REASON = 512;
constexpr uint32_t PORT_STATE = 1, PORT_SET_LINK = 2, PORT_RECEIVE = 3;
constexpr double SETTLE_TIMEOUT = 2.0;  // models/rtl/targets.py
constexpr uint32_t MAX_XFER = 1 << 20;
constexpr int FAULT_GONE = 5;  // sim/rtl/bridge.py FaultReason.GONE

[[noreturn]] void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fputs("vfu-device: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
  std::exit(1);
}

void warn(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fputs("vfu-device: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
}

// ---- the layout file ------------------------------------------------------------------------------------

struct BarInfo {
  int index = -1;
  uint64_t size = 0;
  bool is64 = false, prefetch = false;
};

struct Window {
  unsigned slave;
  int bar;
  uint64_t offset, size, base;
  bool table;  // the in-design MSI-X table's window
};

struct Layout {
  std::string name;
  uint8_t config[CFG_SIZE] = {};
  uint8_t wmask[CFG_SIZE] = {};
  std::map<int, BarInfo> bars;
  std::vector<Window> windows;
  int vectors = 0, table_bar = -1, pba_bar = -1, msix_cap = -1;
  uint64_t table_off = 0, pba_off = 0;
  bool msix_in_design = false;
  int pcicfg_cap = -1, pcicfg_data = 16;
  int reset_cycles = 8;
  std::vector<std::string> status;
  bool loopback = false;
  unsigned pairs = 1;
  std::string mac_hex = "000000000000";
  std::map<int, std::string> fault_text;
  std::map<uint64_t, std::pair<std::string, std::string>> errors;  // code -> (requirement id, text)
  int alive_bar = -1;
  uint64_t alive_offset = 0;
};

bool hex_bytes(const std::string& s, uint8_t* out, size_t n) {
  if (s.size() != 2 * n) return false;
  for (size_t i = 0; i < n; i++) {
    char pair[3] = {s[2 * i], s[2 * i + 1], 0};
    char* end = nullptr;
    unsigned long v = std::strtoul(pair, &end, 16);
    if (end != pair + 2) return false;
    out[i] = uint8_t(v);
  }
  return true;
}

std::string rest_of(std::istringstream& in) {
  std::string rest;
  std::getline(in, rest);
  size_t start = rest.find_first_not_of(' ');
  return start == std::string::npos ? "" : rest.substr(start);
}

Layout load_layout(const char* path) {
  std::ifstream f(path);
  if (!f) die("cannot read the layout %s: %s", path, std::strerror(errno));
  Layout l;
  std::string line;
  int n = 0;
  bool have_config = false;
  while (std::getline(f, line)) {
    n++;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string key;
    in >> key;
    bool ok = true;
    if (key == "name") {
      l.name = rest_of(in);
    } else if (key == "config" || key == "wmask") {
      std::string hex;
      in >> hex;
      ok = hex_bytes(hex, key == "config" ? l.config : l.wmask, CFG_SIZE);
      have_config |= key == "config";
    } else if (key == "bar") {
      BarInfo b;
      int is64 = 0, pf = 0;
      ok = bool(in >> b.index >> b.size >> is64 >> pf) && b.index >= 0 && b.index < 6 && b.size >= 16 &&
           (b.size & (b.size - 1)) == 0;
      b.is64 = is64;
      b.prefetch = pf;
      l.bars[b.index] = b;
    } else if (key == "window") {
      Window w{};
      int table = 0;
      ok = bool(in >> w.slave >> w.bar >> w.offset >> w.size >> w.base >> table);
      w.table = table;
      l.windows.push_back(w);
    } else if (key == "msix") {
      int in_design = 0;
      ok = bool(in >> l.vectors >> l.table_bar >> l.table_off >> l.pba_bar >> l.pba_off >> l.msix_cap >> in_design) &&
           l.vectors >= 1 && l.vectors <= 2048 && l.msix_cap >= 0x40 && l.msix_cap + 12 <= CFG_SIZE;
      l.msix_in_design = in_design;
    } else if (key == "pcicfg") {
      ok = bool(in >> l.pcicfg_cap >> l.pcicfg_data) && l.pcicfg_cap >= 0x40 && l.pcicfg_cap + l.pcicfg_data + 4 <= CFG_SIZE;
    } else if (key == "reset_cycles") {
      ok = bool(in >> l.reset_cycles);
    } else if (key == "status") {
      std::string field;
      while (in >> field) l.status.push_back(field);
    } else if (key == "wire") {
      std::string kind;
      in >> kind;
      l.loopback = kind == "loopback";
      ok = kind == "loopback" || kind == "none";
    } else if (key == "pairs") {
      ok = bool(in >> l.pairs) && l.pairs >= 1;
    } else if (key == "mac") {
      in >> l.mac_hex;
      uint8_t mac[6];
      ok = hex_bytes(l.mac_hex, mac, 6);
    } else if (key == "fault") {
      int reason = 0;
      ok = bool(in >> reason);
      l.fault_text[reason] = rest_of(in);
    } else if (key == "error") {
      uint64_t code = 0;
      std::string rid;
      ok = bool(in >> code >> rid);
      l.errors[code] = {rid, rest_of(in)};
    } else if (key == "alive") {
      ok = bool(in >> l.alive_bar >> l.alive_offset);
    } else {
      die("%s:%d: unknown key %s", path, n, key.c_str());
    }
    if (!ok) die("%s:%d: malformed line: %s", path, n, line.c_str());
  }
  if (!have_config) die("%s: no configuration space image (config line)", path);
  if (l.status.size() < 2 || l.status[1] != "intx") die("%s: status fields must start with the bridge's own", path);
  for (auto& w : l.windows)
    if (!l.bars.count(w.bar) || w.offset + w.size > l.bars[w.bar].size) die("%s: window outside BAR %d", path, w.bar);
  if (l.vectors && (!l.bars.count(l.table_bar) || !l.bars.count(l.pba_bar)))
    die("%s: the MSI-X table or PBA is in a BAR the function lacks", path);
  return l;
}

// ---- little helpers -------------------------------------------------------------------------------------

uint32_t crc32(const std::vector<uint8_t>& data) {  // zlib.crc32
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  uint32_t c = 0xFFFFFFFFu;
  for (uint8_t byte : data) c = table[(c ^ byte) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out + "\"";
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(v));
  return v ? buf : "0x0";
}

// ---- one device: a bridge, a libvfio-user context, a clock ----------------------------------------------

enum Owner : uint8_t { NONE = 0, INTX = 1, MSIX = 2 };
enum Kind { AXIL, SHIM, TABLE, PBA };

struct Block {
  Kind kind;
  uint64_t offset, size;
  const Window* window;
};

struct Fault {
  uint64_t iova, size;
  uint32_t access;
  std::string reason;
};

const Layout* layout = nullptr;
bool verbose = false;

struct GuardSlot;  // the SIGBUS guard's table entry for one DMA mapping (below)

struct Device {
  explicit Device(unsigned index, const std::string& path);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const Layout& l = *layout;
  const unsigned index;
  const std::string path;  // the context's own socket (the public one is a symlink to an idle device's)
  VbBridge* b = nullptr;
  vfu_ctx_t* ctx = nullptr;
  std::thread clock;

  std::mutex mu;      // every bridge call (sim/rtl/runner.py's lock)
  std::mutex ctx_mu;  // the libvfio-user context and the PCI state below; held while vfu_run_ctx serves a message
  uint8_t cfg[CFG_SIZE];
  uint64_t bar_values[6] = {};
  std::vector<Block> blocks[6];
  std::vector<uint8_t> table, pba, shadow;  // platform MSI-X table and PBA; in-design table's address/data words
  std::vector<uint8_t> owner;               // libvfio-user's eventfd slots: who bound each (INTx shares slot 0)
  bool intx_level = false;
  int irq_binding = -1;  // the index of the SET_IRQS being logged, while its "event fd" lines come
  unsigned irq_end = 0;
  bool attached = false;
  bool link_at_attach = true;

  int wake_fd = -1;
  std::atomic<bool> stop{false};
  std::mutex settle_mu;
  std::condition_variable settled_cv;
  uint64_t requests = 0, settled_upto = 0;

  std::map<uint64_t, GuardSlot*> guarded;  // DMA mapping iova -> its SIGBUS guard slot (under `mu`)

  std::mutex port_mu;  // faults, errors, link
  std::vector<Fault> faults;
  std::vector<std::string> errors;
  uint64_t err_count = 0;
  bool link_up = true;
  int st_intx = 1, st_err_count = -1, st_err_code = -1, st_err_queue = -1;
  std::atomic<uint64_t> frames_looped{0}, frames_dropped{0};

  // bridge accesses
  void wake();
  void after(int state);
  bool axil(unsigned slave, bool write, uint32_t addr, uint32_t data, uint32_t strb, uint32_t* rdata);
  bool axil_read_bytes(const Window& w, uint64_t offset, uint8_t* out, size_t size);
  bool axil_write_bytes(const Window& w, uint64_t offset, const uint8_t* data, size_t size);
  uint64_t status_field(int i);
  // MSI-X and INTx (ctx_mu held)
  uint16_t msix_control();
  void set_msix_control(uint16_t c);
  bool msix_enabled() { return msix_control() & MSIX_ENABLE; }
  void sync_inputs();
  bool masked(int v);
  void send(int v);
  void deliver_pending();
  void fire(int v);
  void bind(int v, bool bound);
  void msix_reset();
  void set_intx(bool level);
  void irq_bound(int idx, unsigned i, bool last);
  void irq_unbound(int idx, unsigned a, unsigned b);
  void on_log(int level, const char* msg);
  // BARs and configuration space (ctx_mu held)
  void mount();
  bool block_read(const Block& bl, uint64_t off, uint8_t* out, size_t n);
  bool block_write(const Block& bl, uint64_t off, const uint8_t* data, size_t n);
  bool bar_read(int bar, uint64_t offset, uint8_t* out, size_t size);
  bool bar_write(int bar, uint64_t offset, const uint8_t* data, size_t size);
  uint32_t bar_register(int slot);
  bool pcicfg_target(int* bar, uint32_t* offset, uint32_t* length);
  bool config_read(uint64_t offset, uint8_t* out, size_t size);
  bool config_write(uint64_t offset, const uint8_t* data, size_t size);
  void function_reset();
  // the clock
  uint32_t steer(const uint8_t* frame, size_t len);
  void status_changed(const std::vector<uint64_t>& st, int events);
  void deliver();
  void clock_main();
  bool settle(double timeout);
  void set_link(bool up);
  void check_alive();
  void client_gone();
};

Device* of(vfu_ctx_t* ctx) { return static_cast<Device*>(vfu_get_private(ctx)); }

void Device::wake() {
  uint64_t one = 1;
  ssize_t n = write(wake_fd, &one, sizeof one);
  (void)n;
}

// The clock takes over whatever an access started (RtlRunner._after).
void Device::after(int state) {
  if ((state & ~AXIL_IDLE) || !(state & AXIL_IDLE)) wake();
}

bool Device::axil(unsigned slave, bool write, uint32_t addr, uint32_t data, uint32_t strb, uint32_t* rdata) {
  int state = 0;
  int64_t n;
  {
    std::lock_guard<std::mutex> g(mu);
    n = vb_axil(b, slave, write, addr, data, strb, rdata, &state);
  }
  if (n < 0) {
    warn("%s at %#x of slave %u: %s", write ? "write" : "read", addr, slave, n == -2 ? "no such slave" : "no response");
    return false;
  }
  after(state);
  return true;
}

// A BAR range on a slave port: 32-bit words with byte strobes (sim/rtl/device.py AxiLiteBlock).
bool Device::axil_read_bytes(const Window& w, uint64_t offset, uint8_t* out, size_t size) {
  uint64_t first = offset & ~uint64_t(3);
  for (uint64_t word = first; word < offset + size; word += 4) {
    uint32_t v = 0;
    if (!axil(w.slave, false, uint32_t(w.base + word), 0, 0, &v)) return false;
    for (unsigned k = 0; k < 4; k++) {
      uint64_t pos = word + k;
      if (pos >= offset && pos < offset + size) out[pos - offset] = uint8_t(v >> (8 * k));
    }
  }
  return true;
}

bool Device::axil_write_bytes(const Window& w, uint64_t offset, const uint8_t* data, size_t size) {
  size_t pos = 0;
  while (pos < size) {
    uint64_t addr = offset + pos;
    uint64_t word = addr & ~uint64_t(3);
    unsigned lane = unsigned(addr - word);
    size_t n = std::min<size_t>(4 - lane, size - pos);
    uint32_t value = 0;
    for (size_t k = 0; k < n; k++) value |= uint32_t(data[pos + k]) << (8 * (lane + k));
    uint32_t strb = ((1u << n) - 1) << lane;
    if (!axil(w.slave, true, uint32_t(w.base + word), value, strb, nullptr)) return false;
    pos += n;
  }
  return true;
}

uint64_t Device::status_field(int i) {
  std::vector<uint64_t> st(l.status.size());
  std::lock_guard<std::mutex> g(mu);
  int n = vb_status(b, st.data(), int(st.size()));
  return i >= 0 && i < n ? st[size_t(i)] : 0;
}

// ---- MSI-X and INTx (Msix, DesignMsix, PciEndpoint.set_intx; callers hold ctx_mu) ---------------------------

uint16_t Device::msix_control() {
  if (!l.vectors) return 0;
  return uint16_t(cfg[l.msix_cap + 2] | cfg[l.msix_cap + 3] << 8);
}

void Device::set_msix_control(uint16_t c) {
  cfg[l.msix_cap + 2] = uint8_t(c);
  cfg[l.msix_cap + 3] = uint8_t(c >> 8);
}

// The design's inputs follow the configuration space (RtlEndpoint.sync_inputs).
void Device::sync_inputs() {
  uint16_t command = uint16_t(cfg[CFG_COMMAND] | cfg[CFG_COMMAND + 1] << 8);
  {
    std::lock_guard<std::mutex> g(mu);
    vb_set_bus_master(b, (command & CMD_MASTER) != 0);
    vb_set_msix_enabled(b, msix_enabled());
    vb_set_msix_fmask(b, (msix_control() & MSIX_FMASK) != 0);
  }
  wake();
}

bool Device::masked(int v) {
  if (l.msix_in_design) return false;  // the design masks before it writes
  if (msix_control() & MSIX_FMASK) return true;
  return table[size_t(v) * MSIX_ENTRY + MSIX_CTRL] & 1;
}

void Device::send(int v) {
  if (owner[size_t(v)] != MSIX) return;
  if (vfu_irq_trigger(ctx, uint32_t(v)) < 0) warn("device %u: MSI-X vector %d: %s", index, v, std::strerror(errno));
}

void Device::deliver_pending() {
  if (l.msix_in_design || !msix_enabled()) return;
  for (int v = 0; v < l.vectors; v++)
    if ((pba[size_t(v) / 8] >> (v % 8) & 1) && !masked(v)) {
      pba[size_t(v) / 8] &= uint8_t(~(1u << (v % 8)));
      send(v);
    }
}

void Device::fire(int v) {
  if (v < 0 || v >= l.vectors || !msix_enabled()) return;
  if (masked(v)) {
    pba[size_t(v) / 8] |= uint8_t(1u << (v % 8));
    return;
  }
  send(v);
}

// VFIO programs and unmasks the entry of a vector it binds (Msix.bind; DesignMsix.bind through the table shim).
void Device::bind(int v, bool bound) {
  if (v < 0 || v >= l.vectors) return;
  if (bound)
    owner[size_t(v)] = MSIX;
  else if (owner[size_t(v)] == MSIX)
    owner[size_t(v)] = NONE;
  if (!l.msix_in_design) {
    table[size_t(v) * MSIX_ENTRY + MSIX_CTRL] = bound ? 0 : 1;
    return;
  }
  for (auto& w : l.windows)
    if (w.table) {
      uint32_t words[4] = {MSI_ADDRESS, 0, uint32_t(v), bound ? 0u : 1u};
      uint8_t entry[MSIX_ENTRY];
      std::memcpy(entry, words, sizeof entry);
      axil_write_bytes(w, uint64_t(v) * MSIX_ENTRY, entry, MSIX_ENTRY);
    }
}

void Device::msix_reset() {
  if (!l.vectors) return;
  set_msix_control(uint16_t(l.vectors - 1));
  std::fill(table.begin(), table.end(), 0);
  for (int v = 0; v < l.vectors; v++) table[size_t(v) * MSIX_ENTRY + MSIX_CTRL] = 1;
  std::fill(pba.begin(), pba.end(), 0);
}

// INTx is level-triggered; its eventfd is signalled on each assertion edge.
void Device::set_intx(bool level) {
  bool rising = level && !intx_level;
  intx_level = level;
  uint16_t command = uint16_t(cfg[CFG_COMMAND] | cfg[CFG_COMMAND + 1] << 8);
  if (rising && owner[0] == INTX && !(command & CMD_INTX_DISABLE))
    if (vfu_irq_trigger(ctx, 0) < 0) warn("device %u: INTx: %s", index, std::strerror(errno));
}

int irq_index(const char* name) {
  if (!std::strcmp(name, "INTx")) return INTX;
  if (!std::strcmp(name, "MSI-X")) return MSIX;
  return -1;
}

// libvfio-user just installed an eventfd in slot `i` for a SET_IRQS of index `idx` (EndpointPciAccess.set_irqs).
void Device::irq_bound(int idx, unsigned i, bool last) {
  if (idx == INTX) {
    if (i == 0) owner[0] = INTX;
    return;
  }
  bind(int(i), true);
  if (last) {
    deliver_pending();
    if (!msix_enabled()) {
      set_msix_control(msix_control() | MSIX_ENABLE);
      deliver_pending();
    }
    sync_inputs();
  }
}

// SET_IRQS without eventfds: the whole index disabled (libvfio-user logs the full range), or vectors unbound.
void Device::irq_unbound(int idx, unsigned a, unsigned last) {
  if (idx == INTX) {
    if (owner[0] == INTX) owner[0] = NONE;
    return;
  }
  if (a == 0 && last == unsigned(l.vectors)) {
    for (auto& o : owner)
      if (o == MSIX) o = NONE;
    set_msix_control(msix_control() & ~MSIX_ENABLE);
  } else {
    for (unsigned v = a; v < last; v++) bind(int(v), false);
    deliver_pending();
    if (!msix_enabled()) {
      set_msix_control(msix_control() | MSIX_ENABLE);
      deliver_pending();
    }
  }
  sync_inputs();
}

void Device::on_log(int level, const char* msg) {
  if (verbose || level <= LOG_WARNING) std::fprintf(stderr, "libvfio-user[%u]: %s\n", index, msg);
  if (level != LOG_DEBUG) return;
  char name[16];
  unsigned flags = 0, a = 0, e = 0;
  int i = 0, fd = 0;
  if (std::sscanf(msg, "setting IRQ %15s flags=%x range [%u, %u)", name, &flags, &a, &e) == 4) {
    irq_binding = (flags & 0x4) ? irq_index(name) : -1;  // VFIO_IRQ_SET_DATA_EVENTFD
    irq_end = e;
  } else if (irq_binding >= 0 && std::sscanf(msg, "event fd[%d]=%d", &i, &fd) == 2) {
    bool last = unsigned(i) + 1 >= irq_end;
    irq_bound(irq_binding, unsigned(i), last);
    if (last) irq_binding = -1;
  } else if (std::sscanf(msg, "disabling IRQ type %15s range [%u, %u)", name, &a, &e) == 3) {
    int idx = irq_index(name);
    if (idx >= 0) irq_unbound(idx, a, e);
  }
}

void log_cb(vfu_ctx_t* ctx, int level, const char* msg) { of(ctx)->on_log(level, msg); }

// ---- BARs (Bar, AxiLiteBlock, the MSI-X table/PBA blocks, MsixTableShim; callers hold ctx_mu) -----------------

void Device::mount() {
  for (auto& w : l.windows) blocks[w.bar].push_back(Block{w.table ? SHIM : AXIL, w.offset, w.size, &w});
  if (l.vectors && !l.msix_in_design) {
    blocks[l.table_bar].push_back(Block{TABLE, l.table_off, table.size(), nullptr});
    blocks[l.pba_bar].push_back(Block{PBA, l.pba_off, pba.size(), nullptr});
  }
  for (int i = 0; i < 6; i++) {
    auto& bl = blocks[i];
    std::sort(bl.begin(), bl.end(), [](const Block& x, const Block& y) { return x.offset < y.offset; });
    for (size_t k = 1; k < bl.size(); k++)
      if (bl[k - 1].offset + bl[k - 1].size > bl[k].offset) die("%s: overlapping blocks in BAR %d", l.name.c_str(), i);
    for (auto& blk : bl)
      if (!l.bars.count(i) || blk.offset + blk.size > l.bars.at(i).size)
        die("%s: a block runs past BAR %d", l.name.c_str(), i);
  }
}

bool Device::block_read(const Block& bl, uint64_t off, uint8_t* out, size_t n) {
  switch (bl.kind) {
    case AXIL:
      return axil_read_bytes(*bl.window, off, out, n);
    case TABLE:
      std::memcpy(out, table.data() + off, n);
      return true;
    case PBA:
      std::memcpy(out, pba.data() + off, n);
      return true;
    case SHIM:  // vector control from the design, address and data words kept here
      for (size_t k = 0; k < n; k++) {
        uint64_t pos = off + k;
        if (pos % MSIX_ENTRY >= MSIX_CTRL) {
          uint64_t word = pos & ~uint64_t(3);
          uint8_t value[4];
          if (!axil_read_bytes(*bl.window, word, value, 4)) return false;
          out[k] = value[pos - word];
        } else {
          out[k] = pos < shadow.size() ? shadow[pos] : 0;
        }
      }
      return true;
  }
  return false;
}

bool Device::block_write(const Block& bl, uint64_t off, const uint8_t* data, size_t n) {
  switch (bl.kind) {
    case AXIL:
      return axil_write_bytes(*bl.window, off, data, n);
    case TABLE:
      std::memcpy(table.data() + off, data, n);
      deliver_pending();
      return true;
    case PBA:
      return true;  // read-only
    case SHIM:
      for (size_t k = 0; k < n; k++) {
        uint64_t pos = off + k;
        if (pos % MSIX_ENTRY >= MSIX_CTRL) {
          if (!axil_write_bytes(*bl.window, pos, data + k, 1)) return false;
        } else if (pos < shadow.size()) {
          shadow[pos] = data[k];
        }
      }
      return true;
  }
  return false;
}

// Unclaimed space reads 0 and ignores writes; an access across blocks is served piece by piece.
bool Device::bar_read(int bar, uint64_t offset, uint8_t* out, size_t size) {
  std::memset(out, 0, size);
  for (auto& bl : blocks[bar]) {
    uint64_t lo = std::max(offset, bl.offset), hi = std::min(offset + size, bl.offset + bl.size);
    if (lo < hi && !block_read(bl, lo - bl.offset, out + (lo - offset), hi - lo)) return false;
  }
  return true;
}

bool Device::bar_write(int bar, uint64_t offset, const uint8_t* data, size_t size) {
  for (auto& bl : blocks[bar]) {
    uint64_t lo = std::max(offset, bl.offset), hi = std::min(offset + size, bl.offset + bl.size);
    if (lo < hi && !block_write(bl, lo - bl.offset, data + (lo - offset), hi - lo)) return false;
  }
  return true;
}

template <int N>
ssize_t bar_cb(vfu_ctx_t* ctx, char* buf, size_t count, loff_t offset, bool is_write) {
  Device* d = of(ctx);
  auto it = layout->bars.find(N);
  if (it == layout->bars.end() || offset < 0 || uint64_t(offset) + count > it->second.size) {
    errno = EINVAL;
    return -1;
  }
  auto* p = reinterpret_cast<uint8_t*>(buf);
  if (!(is_write ? d->bar_write(N, uint64_t(offset), p, count) : d->bar_read(N, uint64_t(offset), p, count))) {
    errno = EIO;
    return -1;
  }
  return ssize_t(count);
}

vfu_region_access_cb_t* const BAR_CB[6] = {bar_cb<0>, bar_cb<1>, bar_cb<2>, bar_cb<3>, bar_cb<4>, bar_cb<5>};

// ---- configuration space (ConfigSpace.read/write, pci_cfg_window; callers hold ctx_mu) -------------------------

uint32_t Device::bar_register(int slot) {
  auto low = l.bars.find(slot);
  if (low != l.bars.end()) {
    const BarInfo& bi = low->second;
    uint32_t flags = (bi.is64 ? 0x4 : 0) | (bi.prefetch ? 0x8 : 0);
    return uint32_t(bar_values[slot] & ~(bi.size - 1) & 0xFFFFFFF0u) | flags;
  }
  auto high = slot > 0 ? l.bars.find(slot - 1) : l.bars.end();
  if (high != l.bars.end() && high->second.is64)
    return uint32_t(bar_values[slot] & (~(high->second.size - 1) >> 32) & 0xFFFFFFFFu);
  return 0;
}

// The PCI configuration access capability: its bar/offset/length name a BAR range (PCI-DEV-51/52).
bool Device::pcicfg_target(int* bar, uint32_t* offset, uint32_t* length) {
  int cap = l.pcicfg_cap;
  *bar = cfg[cap + 4];
  std::memcpy(offset, cfg + cap + 8, 4);
  std::memcpy(length, cfg + cap + 12, 4);
  auto it = l.bars.find(*bar);
  return it != l.bars.end() && (*length == 1 || *length == 2 || *length == 4) &&
         uint64_t(*offset) + *length <= it->second.size;
}

bool Device::config_read(uint64_t offset, uint8_t* out, size_t size) {
  int cap = l.pcicfg_cap;
  if (cap >= 0) {  // a read reaching pci_cfg_data fills it from the BAR first
    uint64_t lo = std::max<uint64_t>(offset, uint64_t(cap) + 2), hi = std::min<uint64_t>(offset + size, uint64_t(cap) + 20);
    int bar;
    uint32_t off, len;
    if (lo < hi && hi > uint64_t(cap + l.pcicfg_data) && pcicfg_target(&bar, &off, &len))
      if (!bar_read(bar, off, cfg + cap + l.pcicfg_data, len)) return false;
  }
  bool intx = offset <= CFG_STATUS && CFG_STATUS < offset + size && status_field(st_intx) != 0;
  for (size_t i = 0; i < size; i++) {
    uint64_t o = offset + i;
    if (o >= CFG_BAR0 && o < CFG_BAR0 + 24)
      out[i] = uint8_t(bar_register(int((o - CFG_BAR0) / 4)) >> (8 * ((o - CFG_BAR0) % 4)));
    else if (o == CFG_STATUS)
      out[i] = uint8_t(cfg[o] | (intx ? STATUS_INTERRUPT : 0));
    else
      out[i] = cfg[o];
  }
  return true;
}

bool Device::config_write(uint64_t offset, const uint8_t* data, size_t size) {
  bool window = false, msix = false;
  int pc = l.pcicfg_cap, mc = l.vectors ? l.msix_cap : -1;
  for (size_t i = 0; i < size; i++) {
    uint64_t o = offset + i;
    if (o >= CFG_BAR0 && o < CFG_BAR0 + 24) {
      size_t slot = size_t(o - CFG_BAR0) / 4;
      unsigned shift = unsigned(8 * ((o - CFG_BAR0) % 4));
      bar_values[slot] = (bar_values[slot] & ~(uint64_t(0xFF) << shift)) | uint64_t(data[i]) << shift;
      continue;
    }
    uint8_t m = l.wmask[o];
    cfg[o] = uint8_t((cfg[o] & ~m) | (data[i] & m));
    if (pc >= 0 && o >= uint64_t(pc + l.pcicfg_data) && o < uint64_t(pc) + 20) window = true;
    if (mc >= 0 && o >= uint64_t(mc) + 2 && o < uint64_t(mc) + 12) msix = true;
  }
  bool ok = true;
  int bar;
  uint32_t off, len;
  if (window && pcicfg_target(&bar, &off, &len)) ok = bar_write(bar, off, cfg + pc + l.pcicfg_data, len);
  if (msix) deliver_pending();
  sync_inputs();
  return ok;
}

ssize_t config_cb(vfu_ctx_t* ctx, char* buf, size_t count, loff_t offset, bool is_write) {
  if (offset < 0 || uint64_t(offset) + count > CFG_SIZE) {
    errno = EINVAL;
    return -1;
  }
  Device* d = of(ctx);
  auto* p = reinterpret_cast<uint8_t*>(buf);
  if (!(is_write ? d->config_write(uint64_t(offset), p, count) : d->config_read(uint64_t(offset), p, count))) {
    errno = EIO;
    return -1;
  }
  return ssize_t(count);
}

// ---- reset and DMA (libvfio-user callbacks, under ctx_mu) ------------------------------------------------------

void Device::function_reset() {  // PciEndpoint.function_reset, RtlEndpoint.function_reset
  cfg[CFG_COMMAND] = cfg[CFG_COMMAND + 1] = 0;
  std::fill(std::begin(bar_values), std::end(bar_values), 0);
  msix_reset();
  intx_level = false;
  {
    std::lock_guard<std::mutex> g(mu);
    vb_reset(b, l.reset_cycles);
  }
  wake();
  sync_inputs();
}

int reset_cb(vfu_ctx_t* ctx, vfu_reset_type_t type) {
  Device* d = of(ctx);
  d->function_reset();
  if (type == VFU_RESET_LOST_CONN) {  // libvfio-user closes every eventfd after this
    std::fill(d->owner.begin(), d->owner.end(), NONE);
    d->irq_binding = -1;
  }
  return 0;
}

// ---- the SIGBUS guard ------------------------------------------------------------------------------------------
//
// One table for the process (signal dispositions are per process): each DMA mapping's host range and its flag.
// The handler only reads the table (atomics, no locks: it may interrupt a thread holding one) and makes
// async-signal-safe calls (mmap); slots are claimed and released under guard_mu by the main thread.

constexpr size_t GUARD_SLOTS = 1024;

struct GuardSlot {
  std::atomic<uintptr_t> start{0}, end{0};  // end == 0: free
  uint64_t gone = 0;                        // the bridge's flag for the mapping (vb_dma_guard)
};

GuardSlot guard_slots[GUARD_SLOTS];
std::mutex guard_mu;
long guard_page = 4096;

void on_sigbus(int, siginfo_t* si, void*) {
  auto a = reinterpret_cast<uintptr_t>(si->si_addr);
  for (auto& g : guard_slots) {
    uintptr_t lo = g.start.load(std::memory_order_acquire), hi = g.end.load(std::memory_order_acquire);
    if (hi != 0 && lo <= a && a < hi) {
      void* page = reinterpret_cast<void*>(a & ~uintptr_t(guard_page - 1));
      // the interrupted load or store completes on a private zero page the client never sees
      if (mmap(page, size_t(guard_page), PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) ==
          MAP_FAILED)
        break;
      __atomic_store_n(&g.gone, 1, __ATOMIC_RELEASE);
      return;
    }
  }
  signal(SIGBUS, SIG_DFL);  // not guest memory: the access runs again and kills, as without the guard
}

void install_sigbus_guard() {
  guard_page = sysconf(_SC_PAGESIZE);
  struct sigaction act {};
  act.sa_sigaction = on_sigbus;
  act.sa_flags = SA_SIGINFO;
  sigemptyset(&act.sa_mask);
  if (sigaction(SIGBUS, &act, nullptr) != 0) die("sigaction(SIGBUS): %s", std::strerror(errno));
}

// A guarded range for [host, host + size); the slot's flag, or nullptr when the table is full (then unguarded).
GuardSlot* guard_add(void* host, uint64_t size) {
  std::lock_guard<std::mutex> g(guard_mu);
  for (auto& slot : guard_slots)
    if (slot.end.load(std::memory_order_relaxed) == 0) {
      slot.gone = 0;
      slot.start.store(reinterpret_cast<uintptr_t>(host), std::memory_order_release);
      slot.end.store(reinterpret_cast<uintptr_t>(host) + size, std::memory_order_release);
      return &slot;
    }
  return nullptr;
}

void guard_remove(GuardSlot* slot) {
  std::lock_guard<std::mutex> g(guard_mu);
  slot->end.store(0, std::memory_order_release);
  slot->start.store(0, std::memory_order_release);
}

void dma_register(vfu_ctx_t* ctx, vfu_dma_info_t* info) {
  Device* d = of(ctx);
  auto iova = reinterpret_cast<uint64_t>(info->iova.iov_base);
  uint64_t size = info->iova.iov_len;
  if (info->vaddr == nullptr) {
    warn("device %u: DMA region [%#llx, +%#llx) came without a file descriptor: the design cannot reach it", d->index,
         static_cast<unsigned long long>(iova), static_cast<unsigned long long>(size));
    return;
  }
  int perm = ((info->prot & PROT_READ) ? 1 : 0) | ((info->prot & PROT_WRITE) ? 2 : 0);
  int rc;
  {
    std::lock_guard<std::mutex> g(d->mu);
    rc = vb_dma_map_host(d->b, iova, size, info->vaddr, perm);
    if (rc >= 0) {
      GuardSlot* slot = guard_add(info->vaddr, size);
      if (slot != nullptr) {
        vb_dma_guard(d->b, iova, &slot->gone);
        d->guarded[iova] = slot;
      } else {
        warn("device %u: DMA region [%#llx, +%#llx): the SIGBUS guard's table is full, the mapping is unguarded",
             d->index, static_cast<unsigned long long>(iova), static_cast<unsigned long long>(size));
      }
    }
  }
  if (rc < 0)
    warn("device %u: DMA region [%#llx, +%#llx): the bridge refused it: %s", d->index,
         static_cast<unsigned long long>(iova), static_cast<unsigned long long>(size), std::strerror(-rc));
}

void dma_unregister(vfu_ctx_t* ctx, vfu_dma_info_t* info) {
  Device* d = of(ctx);
  auto iova = reinterpret_cast<uint64_t>(info->iova.iov_base);
  std::lock_guard<std::mutex> g(d->mu);
  vb_dma_unmap(d->b, iova, info->iova.iov_len);
  auto it = d->guarded.find(iova);
  if (it != d->guarded.end()) {  // libvfio-user unmaps the range after this returns: no access can fault on it now
    guard_remove(it->second);
    d->guarded.erase(it);
  }
}

// ---- the clock (RtlRunner._clock, RtlPciDevice and RtlNetModel as event sinks) ---------------------------------

uint32_t Device::steer(const uint8_t* frame, size_t len) {  // RtlNetModel.steer
  if (l.pairs <= 1) return 0;
  std::vector<uint8_t> key(frame, frame + std::min<size_t>(12, len));
  if (len > 26) key.insert(key.end(), frame + 26, frame + std::min<size_t>(34, len));
  return crc32(key) % l.pairs;
}

void Device::status_changed(const std::vector<uint64_t>& st, int events) {
  if (events & EV_INTX) {
    std::lock_guard<std::mutex> g(ctx_mu);
    set_intx(st[size_t(st_intx)] != 0);
  }
  if (!(events & EV_ERRORS) || st_err_count < 0) return;
  std::lock_guard<std::mutex> g(port_mu);
  uint64_t count = st[size_t(st_err_count)];
  if (count == err_count) return;
  uint64_t code = st_err_code >= 0 ? st[size_t(st_err_code)] : 0;
  auto it = l.errors.find(code);
  std::string rid = it != l.errors.end() ? it->second.first : "?";
  std::string text = it != l.errors.end() ? it->second.second : "error code " + std::to_string(code);
  std::string queue = st_err_queue >= 0 ? std::to_string(st[size_t(st_err_queue)]) : "?";
  uint64_t fresh = count > err_count ? count - err_count : count;  // a reset restarts the counter
  for (uint64_t k = 0; k < fresh; k++) errors.push_back(rid + ": " + text + " (queue " + queue + "; DEVICE_NEEDS_RESET)");
  err_count = count;
}

void Device::deliver() {
  std::vector<uint8_t> buf(1 << 18);
  uint32_t lens[256], dests[256];
  uint16_t irqs[256];
  uint64_t f_iova[256], f_size[256];
  int f_access[256], f_reason[256];
  std::vector<Fault> new_faults;
  std::vector<uint64_t> st;
  std::vector<int> vectors;
  std::vector<std::vector<uint8_t>> frames;
  int ev;
  {
    std::lock_guard<std::mutex> g(mu);
    ev = vb_events(b);
    if (ev & EV_FAULTS)
      for (int n; (n = vb_pop_faults(b, f_iova, f_size, f_access, f_reason, 256)) > 0;)
        for (int i = 0; i < n; i++) {
          auto t = l.fault_text.find(f_reason[i]);
          std::string what = t != l.fault_text.end() ? t->second : "fault " + std::to_string(f_reason[i]);
          if (f_reason[i] == FAULT_GONE) what = "memory behind IOVA " + hex(f_iova[i]) + " is gone: its file was truncated";
          new_faults.push_back(Fault{f_iova[i], f_size[i], uint32_t(f_access[i]),
                                     what + " (RTL AXI4 burst at " + hex(f_iova[i]) + ", " + std::to_string(f_size[i]) +
                                         " bytes, answered SLVERR)"});
        }
    if (ev & (EV_INTX | EV_ERRORS)) {
      st.resize(l.status.size());
      st.resize(size_t(std::max(0, vb_status(b, st.data(), int(st.size())))));
    }
    if (ev & EV_IRQS)
      for (int n; (n = vb_pop_irqs(b, irqs, 256)) > 0;) vectors.insert(vectors.end(), irqs, irqs + n);
    if (ev & EV_FRAMES)
      for (int n; (n = vb_pop_frames(b, buf.data(), buf.size(), lens, dests, 256)) > 0;) {
        size_t pos = 0;
        for (int i = 0; i < n; i++) {
          frames.emplace_back(buf.data() + pos, buf.data() + pos + lens[i]);
          pos += lens[i];
        }
      }
  }
  for (const Fault& f : new_faults)  // one line each, as the Python device processes log theirs
    warn("device %u: DMA fault at IOVA %#llx (+%#llx): %s", index, static_cast<unsigned long long>(f.iova),
         static_cast<unsigned long long>(f.size), f.reason.c_str());
  if (!new_faults.empty()) {
    std::lock_guard<std::mutex> g(port_mu);
    faults.insert(faults.end(), new_faults.begin(), new_faults.end());
  }
  if (st.size() > size_t(std::max({st_intx, st_err_count, st_err_code, st_err_queue}))) status_changed(st, ev);
  if (!frames.empty()) {
    if (l.loopback) {  // the loopback wire: back into the receive FIFO, steered as RtlNetModel.receive_batch does
      {
        std::lock_guard<std::mutex> g(mu);
        for (auto& f : frames) vb_push_frame(b, f.data(), uint32_t(f.size()), steer(f.data(), f.size()));
      }
      frames_looped += frames.size();
      wake();
    } else {
      frames_dropped += frames.size();
    }
  }
  if (!vectors.empty()) {
    std::lock_guard<std::mutex> g(ctx_mu);
    for (int v : vectors) fire(v);
  }
}

void Device::clock_main() {
  while (!stop) {
    int result;
    uint64_t requested;
    {
      std::lock_guard<std::mutex> g(mu);
      {
        std::lock_guard<std::mutex> s(settle_mu);
        requested = requests;
      }
      result = vb_run(b, CHUNK, EVENT_DELAY);
    }
    if (result & RUN_EVENTS) {
      deliver();
    } else if (result & RUN_IDLE) {
      {
        std::lock_guard<std::mutex> s(settle_mu);
        settled_upto = std::max(settled_upto, requested);
      }
      settled_cv.notify_all();
      vb_wait(b, -1);
    }
  }
}

// Until the clock found the design idle with nothing left to deliver, after everything started before this call.
bool Device::settle(double timeout) {
  uint64_t target;
  {
    std::lock_guard<std::mutex> s(settle_mu);
    target = ++requests;
  }
  wake();
  std::unique_lock<std::mutex> s(settle_mu);
  return settled_cv.wait_for(s, std::chrono::duration<double>(timeout),
                             [&] { return settled_upto >= target || stop; });
}

void Device::set_link(bool up) {  // RtlNetModel.set_link
  settle(SETTLE_TIMEOUT);
  {
    std::lock_guard<std::mutex> g(port_mu);
    link_up = up;
  }
  {
    std::lock_guard<std::mutex> g(mu);
    vb_set_link(b, up);
    vb_run(b, 4, 0);  // the register block samples the input: visible to the next access
  }
  wake();
}

// Before any client: the design answers on the slave holding the common configuration and reads device_status 0
// and VERSION_1 in device_feature (models/rtl/targets.py check_alive).
void Device::check_alive() {
  if (l.alive_bar < 0) return;
  int bar = l.alive_bar;
  uint64_t at = l.alive_offset;
  uint8_t one[4] = {1, 0, 0, 0}, zero[4] = {}, hi[4] = {}, status = 0xFF;
  if (!bar_write(bar, at, one, 4) || !bar_read(bar, at + 4, hi, 4) || !bar_read(bar, at + 0x14, &status, 1) ||
      !bar_write(bar, at, zero, 4))
    die("%s: the design does not answer on its BAR %d slave after reset: is the reset polarity in the description "
        "right? A design held in reset never completes a transfer", l.name.c_str(), bar);
  if (status != 0 || !(hi[0] & 1))
    die("%s: after reset the common configuration at BAR %d offset %#llx reads device_status %#x and "
        "device_feature[63:32] bit 0 %d (expected 0 and VERSION_1 set)", l.name.c_str(), bar,
        static_cast<unsigned long long>(at), status, hi[0] & 1);
}

Device::Device(unsigned idx, const std::string& socket) : index(idx), path(socket) {
  std::memcpy(cfg, l.config, CFG_SIZE);
  table.assign(size_t(l.vectors) * MSIX_ENTRY, 0);
  pba.assign(size_t((l.vectors + 63) / 64) * 8, 0);
  shadow.assign(size_t(l.vectors) * MSIX_ENTRY, 0);
  owner.assign(size_t(std::max(1, l.vectors)), NONE);
  msix_reset();
  for (size_t i = 0; i < l.status.size(); i++) {
    if (l.status[i] == "err_count") st_err_count = int(i);
    if (l.status[i] == "last_err_code") st_err_code = int(i);
    if (l.status[i] == "last_err_queue") st_err_queue = int(i);
  }
  mount();
  wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) die("eventfd: %s", std::strerror(errno));
  b = vb_new(nullptr);
  if (b == nullptr) die("vb_new failed");
  vb_set_wake_fd(b, wake_fd);
  vb_reset(b, l.reset_cycles);
  check_alive();
  sync_inputs();

  unlink(path.c_str());  // a socket left behind by an earlier run
  ctx = vfu_create_ctx(VFU_TRANS_SOCK, path.c_str(), LIBVFIO_USER_FLAG_ATTACH_NB, this, VFU_DEV_TYPE_PCI);
  if (ctx == nullptr) die("vfu_create_ctx(%s): %s", path.c_str(), std::strerror(errno));
  auto must = [](int rc, const char* what) {
    if (rc < 0) die("%s: %s", what, std::strerror(errno));
  };
  must(vfu_setup_log(ctx, log_cb, LOG_DEBUG), "vfu_setup_log");
  must(vfu_pci_init(ctx, VFU_PCI_TYPE_CONVENTIONAL, 0, 0), "vfu_pci_init");
  uint16_t ids[4];
  std::memcpy(&ids[0], l.config + 0x00, 4);
  std::memcpy(&ids[2], l.config + 0x2C, 4);
  vfu_pci_set_id(ctx, ids[0], ids[1], ids[2], ids[3]);
  must(vfu_setup_region(ctx, VFU_PCI_DEV_CFG_REGION_IDX, CFG_SIZE, config_cb,
                        VFU_REGION_FLAG_RW | VFU_REGION_FLAG_ALWAYS_CB, nullptr, 0, -1, 0),
       "vfu_setup_region(config space)");
  for (auto& [i, bar] : l.bars)
    must(vfu_setup_region(ctx, VFU_PCI_DEV_BAR0_REGION_IDX + i, bar.size, BAR_CB[i],
                          VFU_REGION_FLAG_RW | VFU_REGION_FLAG_MEM | (bar.is64 ? VFU_REGION_FLAG_64_BITS : 0), nullptr,
                          0, -1, 0),
         "vfu_setup_region(BAR)");
  must(vfu_setup_device_nr_irqs(ctx, VFU_DEV_INTX_IRQ, 1), "vfu_setup_device_nr_irqs(INTx)");
  if (l.vectors) must(vfu_setup_device_nr_irqs(ctx, VFU_DEV_MSIX_IRQ, uint32_t(l.vectors)), "vfu_setup_device_nr_irqs(MSI-X)");
  must(vfu_setup_device_dma(ctx, dma_register, dma_unregister), "vfu_setup_device_dma");
  must(vfu_setup_device_reset_cb(ctx, reset_cb), "vfu_setup_device_reset_cb");
  must(vfu_realize_ctx(ctx), "vfu_realize_ctx");
  clock = std::thread(&Device::clock_main, this);
}

Device::~Device() {
  stop = true;
  wake();
  if (clock.joinable()) clock.join();
  {
    std::lock_guard<std::mutex> g(ctx_mu);
    vfu_destroy_ctx(ctx);  // unlinks its socket
  }
  vb_free(b);
  close(wake_fd);
}

// After a client hung up (libvfio-user reset the function and dropped its maps and eventfds): the next client finds
// a fresh device, as a new in-process device would be; the cable as the client found it.
void Device::client_gone() {
  settle(SETTLE_TIMEOUT);
  bool link;
  {
    std::lock_guard<std::mutex> g(port_mu);
    link = link_up;
  }
  if (link != link_at_attach) set_link(link_at_attach);
  settle(SETTLE_TIMEOUT);
  uint64_t count = st_err_count >= 0 ? status_field(st_err_count) : 0;
  std::lock_guard<std::mutex> g(port_mu);
  if (!faults.empty())
    std::fprintf(stderr, "vfu-device: device %u: %zu DMA fault(s) the client never collected, first: %s\n", index,
                 faults.size(), faults[0].reason.c_str());
  faults.clear();
  errors.clear();
  err_count = count;
}

// ---- the pool: one device per client at a time, on one public socket ---------------------------------------------
//
// A libvfio-user context serves one client. The suite opens several devices at once (a probe left open while the
// check opens its own), as the project's Python server allows: so the public SOCKET is a symlink to the socket of
// an idle device (SOCKET.d<N>), moved to another (made when none is idle, up to MAX_DEVICES) as soon as a client
// attaches. With all of them in use, a new client waits in the last one's backlog.

constexpr unsigned MAX_DEVICES = 8;

struct Pool {
  std::string public_path;
  std::vector<std::unique_ptr<Device>> devices;
  Device* pointed = nullptr;
  std::mutex mu;  // attached/attach order/bench pairing (read by the bench thread)
  std::condition_variable changed;
  std::map<Device*, uint64_t> attach_seq;  // attached devices: when
  std::map<Device*, bool> paired;          // attached devices that have their bench connection
  uint64_t seq = 0;
  unsigned clients = 0;
};

Pool pool;

void point_at(Device* d) {
  std::string tmp = pool.public_path + ".link";
  std::string target = d->path.substr(d->path.find_last_of('/') + 1);
  unlink(tmp.c_str());
  if (symlink(target.c_str(), tmp.c_str()) < 0 || rename(tmp.c_str(), pool.public_path.c_str()) < 0)
    die("%s: cannot point it at %s: %s", pool.public_path.c_str(), d->path.c_str(), std::strerror(errno));
  pool.pointed = d;
}

Device* new_device() {
  unsigned i = unsigned(pool.devices.size());
  pool.devices.push_back(std::make_unique<Device>(i, pool.public_path + ".d" + std::to_string(i)));
  return pool.devices.back().get();
}

// The public socket leads to an idle device whenever there is (or may be made) one.
void repoint() {
  if (pool.pointed != nullptr && !pool.pointed->attached) return;
  for (auto& d : pool.devices)
    if (!d->attached) return point_at(d.get());
  if (pool.devices.size() < MAX_DEVICES) point_at(new_device());
}

// ---- the bench side channel ---------------------------------------------------------------------------------

struct Msg {
  uint16_t id = 0, command = 0;
  uint32_t size = 0, flags = 0, error = 0;
  std::vector<uint8_t> payload;
};

struct BenchConn {
  int fd;
  Device* dev = nullptr;
};

bool read_all(int fd, void* p, size_t n) {
  auto* c = static_cast<uint8_t*>(p);
  while (n) {
    ssize_t r = recv(fd, c, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= size_t(r);
  }
  return true;
}

bool write_all(int fd, const void* p, size_t n) {
  auto* c = static_cast<const uint8_t*>(p);
  while (n) {
    ssize_t r = send(fd, c, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= size_t(r);
  }
  return true;
}

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}

template <typename T>
T get(const std::vector<uint8_t>& in, size_t at) {
  T v;
  std::memcpy(&v, in.data() + at, sizeof v);
  return v;
}

bool reply(int fd, const Msg& to, const std::vector<uint8_t>& payload, int err) {
  std::vector<uint8_t> out;
  put<uint16_t>(out, to.id);
  put<uint16_t>(out, to.command);
  put<uint32_t>(out, uint32_t(16 + (err ? 0 : payload.size())));
  put<uint32_t>(out, FLAG_REPLY | (err ? FLAG_ERROR : 0));
  put<uint32_t>(out, uint32_t(err));
  if (!err) out.insert(out.end(), payload.begin(), payload.end());
  return write_all(fd, out.data(), out.size());
}

// The device a new bench connection belongs to: the most recently attached one without its bench connection yet
// (a client connects its side channel right after its VERSION on the main socket). Waits a moment for the attach
// to be recorded; without such a device, the most recently attached one.
Device* pair_bench() {
  std::unique_lock<std::mutex> g(pool.mu);
  auto pick = [](bool unpaired) -> Device* {
    Device* best = nullptr;
    uint64_t when = 0;
    for (auto& [d, s] : pool.attach_seq)
      if ((!unpaired || !pool.paired[d]) && s > when) {
        best = d;
        when = s;
      }
    return best;
  };
  Device* d = nullptr;
  pool.changed.wait_for(g, std::chrono::seconds(2), [&] { return (d = pick(true)) != nullptr; });
  if (d == nullptr) d = pick(false);
  if (d != nullptr) pool.paired[d] = true;
  return d;
}

int bench_faults(Device& d, const Msg& m, std::vector<uint8_t>& out) {
  if (m.payload.size() != 8) return EINVAL;
  uint32_t argsz = get<uint32_t>(m.payload, 0), flags = get<uint32_t>(m.payload, 4);
  if (argsz < 12 || flags != 0) return EINVAL;
  int64_t room = int64_t(std::min(argsz, MAX_XFER)) - 12;
  std::vector<uint8_t> body;
  uint32_t count = 0, more = 0;
  {
    std::lock_guard<std::mutex> g(d.port_mu);
    size_t taken = 0;
    for (; taken < d.faults.size(); taken++) {
      const Fault& f = d.faults[taken];
      std::string reason = f.reason.substr(0, MAX_REASON);
      int64_t size = 24 + int64_t(reason.size());
      if (size > room && count) {
        more = 1;
        break;
      }
      room -= size;
      put<uint64_t>(body, f.iova);
      put<uint64_t>(body, f.size);
      put<uint32_t>(body, f.access);
      put<uint32_t>(body, uint32_t(reason.size()));
      body.insert(body.end(), reason.begin(), reason.end());
      count++;
    }
    d.faults.erase(d.faults.begin(), d.faults.begin() + long(taken));
  }
  put<uint32_t>(out, uint32_t(12 + body.size()));
  put<uint32_t>(out, more);
  put<uint32_t>(out, count);
  out.insert(out.end(), body.begin(), body.end());
  return 0;
}

int bench_port(Device& d, const Msg& m, std::vector<uint8_t>& out) {
  if (m.payload.size() < 12 || get<uint32_t>(m.payload, 0) != m.payload.size()) return EINVAL;
  uint32_t op = get<uint32_t>(m.payload, 4), arg = get<uint32_t>(m.payload, 8);
  size_t data_len = m.payload.size() - 12;
  if (op == PORT_STATE) {
    std::string s;
    {
      std::lock_guard<std::mutex> g(d.port_mu);
      s = std::string("{\"link_up\": ") + (d.link_up ? "true" : "false") + ", \"mac\": \"" + d.l.mac_hex +
          "\", \"errors\": [";
      for (size_t i = 0; i < d.errors.size(); i++) s += (i ? ", " : "") + json_string(d.errors[i]);
      s += "]}";
    }
    out.assign(s.begin(), s.end());
    return 0;
  }
  if (op == PORT_SET_LINK) {
    if (arg > 1 || data_len) return EINVAL;
    d.set_link(arg == 1);
    return 0;
  }
  if (op == PORT_RECEIVE) {
    if (arg || !data_len) return EINVAL;
    if (data_len > MAX_PORT_FRAME) return EMSGSIZE;
    const uint8_t* frame = m.payload.data() + 12;
    int rc;
    {
      std::lock_guard<std::mutex> g(d.mu);
      rc = vb_push_frame(d.b, frame, uint32_t(data_len), d.steer(frame, data_len));
    }
    d.wake();
    return rc == -2 ? ENOTSUP : 0;  // -1: the receive FIFO was full, the frame is dropped as on a wire
  }
  return EINVAL;
}

// One request on a bench connection; false when the connection is to be closed.
bool bench_serve(BenchConn& c) {
  uint8_t hdr[16];
  if (!read_all(c.fd, hdr, sizeof hdr)) return false;
  Msg m;
  std::memcpy(&m.id, hdr, 2);
  std::memcpy(&m.command, hdr + 2, 2);
  std::memcpy(&m.size, hdr + 4, 4);
  std::memcpy(&m.flags, hdr + 8, 4);
  std::memcpy(&m.error, hdr + 12, 4);
  if (m.size < 16 || m.size > MAX_BENCH_MESSAGE || (m.flags & 0xF) != 0) {
    warn("bench connection: malformed header (size %u, flags %#x): closed", m.size, m.flags);
    return false;
  }
  m.payload.resize(m.size - 16);
  if (!m.payload.empty() && !read_all(c.fd, m.payload.data(), m.payload.size())) return false;
  bool known = m.command == CMD_VERSION || m.command == CMD_BENCH_DMA_FAULTS || m.command == CMD_BENCH_PORT;
  if (known && c.dev == nullptr) c.dev = pair_bench();
  std::vector<uint8_t> out;
  int err = 0;
  if (!known) {
    err = ENOSYS;
  } else if (c.dev == nullptr) {
    err = ENODEV;  // no client is attached on the main socket
  } else if (m.command == CMD_VERSION) {
    put<uint16_t>(out, 0);
    put<uint16_t>(out, 1);
    std::string caps = "{\"capabilities\":{\"vdpa_bench\":{\"ioeventfd\":false,\"dma_faults\":true,\"port\":true}}}";
    out.insert(out.end(), caps.begin(), caps.end());
    out.push_back(0);
  } else if (m.command == CMD_BENCH_DMA_FAULTS) {
    err = bench_faults(*c.dev, m, out);
  } else {
    err = bench_port(*c.dev, m, out);
  }
  if (m.flags & 0x10) return true;  // no reply wanted
  return reply(c.fd, m, out, err);
}

int bench_listen(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) die("%s: socket path too long", path.c_str());
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket: %s", std::strerror(errno));
  unlink(path.c_str());
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 || listen(fd, 16) < 0)
    die("%s: %s", path.c_str(), std::strerror(errno));
  return fd;
}

std::atomic<bool> stopping{false};

void bench_main(int listen_fd, int stop_fd) {
  std::vector<BenchConn> conns;
  while (!stopping) {
    std::vector<pollfd> pf{{listen_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    for (auto& c : conns) pf.push_back({c.fd, POLLIN, 0});
    if (poll(pf.data(), pf.size(), -1) < 0) {
      if (errno == EINTR) continue;
      die("bench poll: %s", std::strerror(errno));
    }
    if (pf[1].revents) break;
    std::vector<BenchConn> keep;
    for (size_t i = 2; i < pf.size(); i++) {
      BenchConn& c = conns[i - 2];
      if (pf[i].revents && !bench_serve(c)) {
        close(c.fd);
        continue;
      }
      keep.push_back(c);
    }
    conns = keep;
    if (pf[0].revents & POLLIN) {
      int c = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) conns.push_back(BenchConn{c, nullptr});
    }
  }
  for (auto& c : conns) close(c.fd);
}

// ---- the main loop ----------------------------------------------------------------------------------------------

// One readable context: accept its client, or serve what it sent; false when --once says stop.
bool serve(Device& d, bool once) {
  std::unique_lock<std::mutex> g(d.ctx_mu);
  if (!d.attached) {
    if (vfu_attach_ctx(d.ctx) < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        warn("device %u: a client connected but did not complete the vfio-user handshake: %s", d.index,
             std::strerror(errno));
      return true;
    }
    d.attached = true;
    {
      std::lock_guard<std::mutex> p(d.port_mu);
      d.link_at_attach = d.link_up;
    }
    {
      std::lock_guard<std::mutex> p(pool.mu);
      pool.attach_seq[&d] = ++pool.seq;
      pool.paired[&d] = false;
      pool.clients++;
    }
    pool.changed.notify_all();
    g.unlock();
    repoint();
    return true;
  }
  int r;
  while ((r = vfu_run_ctx(d.ctx)) > 0) {
  }
  if (r == 0) return true;
  int err = errno;
  g.unlock();
  if (err != ENOTCONN) die("device %u: vfu_run_ctx: %s", d.index, std::strerror(err));
  {
    std::lock_guard<std::mutex> p(pool.mu);
    pool.attach_seq.erase(&d);
    pool.paired.erase(&d);
  }
  d.client_gone();
  d.attached = false;
  repoint();
  return !once;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> pos;
  bool once = false;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--once")
      once = true;
    else if (a == "--verbose")
      verbose = true;
    else
      pos.push_back(a);
  }
  if (pos.size() != 2) {
    std::fprintf(stderr, "usage: vfu-device SOCKET LAYOUT [--once] [--verbose]\n");
    return 2;
  }
  static const Layout loaded = load_layout(pos[1].c_str());
  layout = &loaded;
  pool.public_path = pos[0];

  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  if (pthread_sigmask(SIG_BLOCK, &sigs, nullptr) != 0) die("pthread_sigmask failed");
  signal(SIGPIPE, SIG_IGN);
  install_sigbus_guard();
  int sig_fd = signalfd(-1, &sigs, SFD_CLOEXEC);
  if (sig_fd < 0) die("signalfd: %s", std::strerror(errno));

  unlink(pool.public_path.c_str());
  point_at(new_device());
  const std::string bench_path = pool.public_path + ".bench";
  int bench_fd = bench_listen(bench_path);
  int bench_stop = eventfd(0, EFD_CLOEXEC);
  std::thread bench(bench_main, bench_fd, bench_stop);

  std::printf("listening on %s\n", pool.public_path.c_str());
  std::fflush(stdout);

  bool running = true;
  while (running) {
    std::vector<pollfd> pf{{sig_fd, POLLIN, 0}};
    std::vector<Device*> who;
    for (auto& d : pool.devices) {
      pf.push_back({vfu_get_poll_fd(d->ctx), POLLIN, 0});
      who.push_back(d.get());
    }
    if (poll(pf.data(), pf.size(), -1) < 0) {
      if (errno == EINTR) continue;
      die("poll: %s", std::strerror(errno));
    }
    if (pf[0].revents) break;
    for (size_t i = 1; i < pf.size() && running; i++)
      if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) running = serve(*who[i - 1], once);
  }

  stopping = true;
  uint64_t one = 1;
  ssize_t n = write(bench_stop, &one, sizeof one);
  (void)n;
  bench.join();
  close(bench_fd);
  unlink(bench_path.c_str());
  unlink(pool.public_path.c_str());
  uint64_t cycles = 0, looped = 0;
  for (auto& d : pool.devices) {
    cycles += d->status_field(0);
    looped += d->frames_looped;
  }
  size_t count = pool.devices.size();
  pool.devices.clear();
  std::printf("%llu cycles simulated, %llu frames looped back, %u client(s) on %zu device(s)\n",
              static_cast<unsigned long long>(cycles), static_cast<unsigned long long>(looped), pool.clients, count);
  std::fflush(stdout);
  return 0;
}
