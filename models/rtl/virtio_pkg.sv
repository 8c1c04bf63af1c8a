// virtio 1.4 constants shared by the RTL blocks: virtio-pci modern BAR0 layout,
// common configuration words (4.1.4.3), device status bits (2.1), feature bits
// (6, 5.1.3) and the split-ring layout (2.7). Values match backend/virtio/*.py.
// After the package: the port bundles the modules share (macros).
package virtio_pkg;

  // ---- BAR0 layout (README.md): common 0x0000, ISR 0x1000, device 0x2000, notify 0x3000, ------
  // ---- vendor vq state 0x3800, vendor dirty page log 0x3F00; MSI-X table 0x4000 and PBA -------
  // ---- 0x5000 belong to the bridge --------------------------------------------------------------
  localparam logic [31:0] COMMON_CFG_LEN     = 32'h40;
  localparam logic [31:0] NET_CFG_LEN        = 32'hC;   // mac, status, max_virtqueue_pairs, mtu
  localparam logic [31:0] NOTIFY_OFF_MULTIPLIER = 4;

  // ---- struct virtio_pci_common_cfg (4.1.4.3), by 32-bit word: the value is the offset / 4 ------
  typedef enum logic [3:0] {
    CC_DEVICE_FEATURE_SELECT, CC_DEVICE_FEATURE, CC_DRIVER_FEATURE_SELECT, CC_DRIVER_FEATURE,
    CC_MSIX_NUMQ,         // config_msix_vector | num_queues << 16
    CC_STATUS_GEN_QSEL,   // device_status | config_generation << 8 | queue_select << 16
    CC_QSIZE_QVEC,        // queue_size | queue_msix_vector << 16
    CC_QENABLE_QNOFF,     // queue_enable | queue_notify_off << 16
    CC_QUEUE_DESC_LO, CC_QUEUE_DESC_HI, CC_QUEUE_DRIVER_LO, CC_QUEUE_DRIVER_HI, CC_QUEUE_DEVICE_LO, CC_QUEUE_DEVICE_HI,
    CC_NOTIFDATA_QRESET,  // queue_notif_config_data | queue_reset << 16
    CC_ADMIN_QUEUE        // admin_queue_index | admin_queue_num << 16
  } common_cfg_word_e;

  // ---- device_status (2.1) --------------------------------------------------------------------
  localparam logic [7:0] S_DRIVER_OK          = 8'h04;
  localparam logic [7:0] S_FEATURES_OK        = 8'h08;
  localparam logic [7:0] S_DEVICE_NEEDS_RESET = 8'h40;
  localparam logic [7:0] S_FAILED             = 8'h80;

  // ---- feature bits ---------------------------------------------------------------------------
  localparam int F_NET_CSUM        = 0;
  localparam int F_NET_GUEST_CSUM  = 1;
  localparam int F_NET_MTU         = 3;
  localparam int F_NET_MAC         = 5;
  localparam int F_NET_MRG_RXBUF   = 15;
  localparam int F_NET_STATUS      = 16;
  localparam int F_NET_CTRL_VQ     = 17;
  localparam int F_NET_MQ          = 22;
  localparam int F_EVENT_IDX       = 29;
  localparam int F_VERSION_1       = 32;
  localparam int F_ACCESS_PLATFORM = 33;
  localparam int F_RING_PACKED     = 34;
  localparam int F_ORDER_PLATFORM  = 36;
  localparam int F_RING_RESET      = 40;

  // ---- ISR status bits, vectors -----------------------------------------------------------------
  localparam logic [1:0]  ISR_QUEUE  = 2'b01;
  localparam logic [1:0]  ISR_CONFIG = 2'b10;
  localparam logic [15:0] NO_VECTOR  = 16'hFFFF;
  localparam logic [15:0] VIRTIO_NET_S_LINK_UP = 16'h0001;

  // ---- split ring (2.7) -------------------------------------------------------------------------
  localparam logic [15:0] DESC_F_NEXT     = 16'h0001;
  localparam logic [15:0] DESC_F_WRITE    = 16'h0002;
  localparam logic [15:0] DESC_F_INDIRECT = 16'h0004;
  localparam logic [15:0] VRING_AVAIL_F_NO_INTERRUPT = 16'h0001;
  localparam logic [31:0] NET_HDR_LEN     = 12;  // struct virtio_net_hdr with num_buffers (VERSION_1)
  localparam logic [7:0]  NET_HDR_F_NEEDS_CSUM = 8'h01;  // virtio_net_hdr.flags (5.1.6)
  localparam logic [7:0]  NET_HDR_F_DATA_VALID = 8'h02;

  // ---- packed ring (2.8) ------------------------------------------------------------------------
  // struct pvirtq_desc: le64 addr, le32 len, le16 id, le16 flags; NEXT/WRITE/INDIRECT as above
  localparam logic [15:0] DESC_F_AVAIL    = 16'h0080;
  localparam logic [15:0] DESC_F_USED     = 16'h8000;
  // desc_event_flags of struct pvirtq_event_suppress (le16 desc {wrap, off[14:0]}, le16 flags)
  typedef enum logic [1:0] {RING_EVENT_FLAGS_ENABLE, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_DESC} ring_event_flags_e;

  // A packed ring position is {wrap counter, offset[14:0]}; both counters start at 1 (2.8.1).
  localparam logic [15:0] PACKED_START = 16'h8000;

  // the descriptor at a position whose flags say "available for this wrap counter": AVAIL == wrap, USED != wrap
  function automatic logic packed_is_avail(input logic [15:0] flags, input logic wrap);
    return (flags & (DESC_F_AVAIL | DESC_F_USED)) == (wrap ? DESC_F_AVAIL : DESC_F_USED);
  endfunction

  // the flags word that marks a descriptor used with the Device Ring Wrap Counter wrap: AVAIL = USED = wrap
  function automatic logic [15:0] packed_used_flags(input logic wrap, input logic written);
    return (wrap ? (DESC_F_AVAIL | DESC_F_USED) : 16'h0) | (written ? DESC_F_WRITE : 16'h0);
  endfunction

  // position pos moved on by n slots (n <= size): the wrap counter flips where the offset passes the end
  function automatic logic [15:0] packed_advance(input logic [15:0] pos, input logic [16:0] n, input logic [15:0] size);
    logic [16:0] off;
    off = 17'(pos[14:0]) + n;
    return off >= 17'(size) ? {~pos[15], 15'(off - 17'(size))} : {pos[15], off[14:0]};
  endfunction

  // RING_EVENT_FLAGS_DESC: the event position lies among the count slots just before new (2.8.10), counted
  // modulo 2 * size (wrap 1 is the first lap) so one lap is never mistaken for none. An event offset outside
  // the ring is the driver's error: notify, which is never wrong.
  function automatic logic packed_need_event(input logic [15:0] ev, input logic [15:0] new_pos, input logic [16:0] count,
                                             input logic [15:0] size);
    logic [17:0] lap, lin_new, lin_ev, d;
    lap     = 18'(size) + 18'(size);
    lin_new = 18'(new_pos[14:0]) + (new_pos[15] ? 18'd0 : 18'(size));
    lin_ev  = 18'(ev[14:0]) + (ev[15] ? 18'd0 : 18'(size));
    d       = lin_new + lap - lin_ev - 18'd1;
    if (d >= lap) d = d - lap;
    return 17'(ev[14:0]) >= 17'(size) || d < 18'(count);
  endfunction

  // ---- control queue (5.1.6.5) ----------------------------------------------------------------
  localparam logic [7:0] VIRTIO_NET_CTRL_MQ              = 8'd4;
  localparam logic [7:0] VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 8'd0;
  localparam logic [7:0] VIRTIO_NET_OK                   = 8'd0;
  localparam logic [7:0] VIRTIO_NET_ERR                  = 8'd1;

  // ---- driver errors the engine reports when it sets DEVICE_NEEDS_RESET ----------------------
  // Each code's comment is the requirement the driver broke and what it did (models/rtl ERROR_CODES reads it).
  // ERR_DMA is an AXI SLVERR/DECERR; ERR_QUEUE_CONFIG also covers SPLIT-DRV-01 and PACKED-DRV-01 (alignment).
  typedef enum logic [3:0] {
    ERR_NONE          = 4'd0,
    ERR_HEAD_RANGE    = 4'd1,   // SPLIT-DRV-04: avail ring names a descriptor >= queue size
    ERR_NEXT_RANGE    = 4'd2,   // SPLIT-DRV-04: descriptor next >= queue size
    ERR_CHAIN_LEN     = 4'd3,   // SPLIT-DRV-08: chain longer than the queue size (a loop)
    ERR_AVAIL_AHEAD   = 4'd4,   // SPLIT-DRV-11: avail idx more than the queue size ahead of last_avail_idx
    ERR_RD_AFTER_WR   = 4'd5,   // SPLIT-DRV-02: device-readable descriptor after a device-writable one
    ERR_INDIRECT      = 4'd6,   // SPLIT-DRV-06: INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC
    ERR_DMA           = 4'd7,   // FEAT-DRV-11: bus error on a ring or buffer address (not mapped, or beyond ADDR_W)
    ERR_QUEUE_CONFIG  = 4'd8,   // PCI-DRV-17: queue_enable with a bad queue_size or misaligned ring parts
    ERR_NOT_AVAIL     = 4'd9,   // PACKED-DRV-11: packed: a descriptor of a list not made available for the driver wrap counter
    ERR_P_CHAIN_LEN   = 4'd10,  // PACKED-DRV-07: packed: list longer than the queue size
    ERR_P_INDIRECT    = 4'd11,  // PACKED-DRV-12: packed: INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC
    ERR_P_RD_AFTER_WR = 4'd12   // PACKED-DRV-08: packed: device-readable descriptor after a device-writable one
  } err_e;

endpackage

// ---- port bundles, declared once for every module that has them -----------------------------
// Macros rather than interfaces: virtio_net_top and virtio_pci_regs are simulation tops (the native
// bridge and the cocotb benches reach their ports by name), where both simulators want flat ports.
// Widths come from the declaring module's ID_W, ADDR_W, DATA_W, W (DATA_W / 8), PAIR_W, NUM_QUEUES, QW.

// The address channel ch (aw or ar) of an AXI4 master (guest memory) and of an AXI4-Lite slave (BAR0
// offsets 0x0000..0x3FFF, 32-bit data); then the master and the slave
`define VNET_AXI4_ADDR_PORTS(ch) \
  output logic [ID_W-1:0]     m_axi_``ch``id, \
  output logic [ADDR_W-1:0]   m_axi_``ch``addr, \
  output logic [7:0]          m_axi_``ch``len, \
  output logic [2:0]          m_axi_``ch``size, \
  output logic [1:0]          m_axi_``ch``burst, \
  output logic                m_axi_``ch``lock, \
  output logic [3:0]          m_axi_``ch``cache, \
  output logic [2:0]          m_axi_``ch``prot, \
  output logic                m_axi_``ch``valid, \
  input  logic                m_axi_``ch``ready
`define VNET_AXIL_ADDR_PORTS(ch) \
  input  logic [13:0]         s_axil_``ch``addr, \
  input  logic [2:0]          s_axil_``ch``prot, \
  input  logic                s_axil_``ch``valid, \
  output logic                s_axil_``ch``ready
`define VNET_AXI4_MASTER_PORTS \
  `VNET_AXI4_ADDR_PORTS(aw), \
  output logic [DATA_W-1:0]   m_axi_wdata, \
  output logic [W-1:0]        m_axi_wstrb, \
  output logic                m_axi_wlast, \
  output logic                m_axi_wvalid, \
  input  logic                m_axi_wready, \
  input  logic [ID_W-1:0]     m_axi_bid, \
  input  logic [1:0]          m_axi_bresp, \
  input  logic                m_axi_bvalid, \
  output logic                m_axi_bready, \
  `VNET_AXI4_ADDR_PORTS(ar), \
  input  logic [ID_W-1:0]     m_axi_rid, \
  input  logic [DATA_W-1:0]   m_axi_rdata, \
  input  logic [1:0]          m_axi_rresp, \
  input  logic                m_axi_rlast, \
  input  logic                m_axi_rvalid, \
  output logic                m_axi_rready

`define VNET_AXIL_SLAVE_PORTS \
  `VNET_AXIL_ADDR_PORTS(aw), \
  input  logic [31:0]         s_axil_wdata, \
  input  logic [3:0]          s_axil_wstrb, \
  input  logic                s_axil_wvalid, \
  output logic                s_axil_wready, \
  output logic [1:0]          s_axil_bresp, \
  output logic                s_axil_bvalid, \
  input  logic                s_axil_bready, \
  `VNET_AXIL_ADDR_PORTS(ar), \
  output logic [31:0]         s_axil_rdata, \
  output logic [1:0]          s_axil_rresp, \
  output logic                s_axil_rvalid, \
  input  logic                s_axil_rready

// AXI4-Stream port p of frames, tkeep packed from lane 0, tdest a queue pair; the directions are the
// sender's (to_rx: tdata .. tdest) and the receiver's (to_tx: tready): s_axis is (input, output)
`define VNET_AXIS_PORTS(p, to_rx, to_tx) \
  to_rx  logic [DATA_W-1:0]   p``_tdata, \
  to_rx  logic [W-1:0]        p``_tkeep, \
  to_rx  logic                p``_tlast, \
  to_rx  logic                p``_tvalid, \
  to_tx  logic                p``_tready, \
  to_rx  logic [PAIR_W-1:0]   p``_tdest

// The dirty page log block (BAR0 0x3F00, README.md): the register block's settings toward the DMA unit
// (to_dma: through the ring engine) and the DMA unit's state and events back (to_regs). log_overflow and
// log_fault are one-cycle pulses that set LOG_STATUS bits; log_busy is high while a log write is in flight.
`define VNET_LOG_PORTS(to_dma, to_regs) \
  to_dma  logic                          log_enable, \
  to_dma  logic [63:0]                   log_base, \
  to_dma  logic [31:0]                   log_pages, \
  to_regs logic                          log_busy, \
  to_regs logic                          log_overflow, \
  to_regs logic                          log_fault

// Between the register block and the ring engine: configuration and requests to the engine
// (to_engine), the engine's progress, acknowledgements, errors and interrupts back (to_regs)
`define VNET_ENGINE_PORTS(to_engine, to_regs) \
  to_engine logic                        live, \
  to_engine logic [63:0]                 negotiated, \
  to_engine logic [NUM_QUEUES-1:0][15:0] q_size, \
  to_engine logic [NUM_QUEUES-1:0][63:0] q_desc, \
  to_engine logic [NUM_QUEUES-1:0][63:0] q_driver, \
  to_engine logic [NUM_QUEUES-1:0][63:0] q_device, \
  to_engine logic [NUM_QUEUES-1:0]       q_enable, \
  to_engine logic                        kick_valid, \
  to_engine logic [QW-1:0]               kick_queue, \
  to_engine logic                        dev_reset_req, \
  to_regs   logic                        dev_reset_ack, \
  to_engine logic [NUM_QUEUES-1:0]       qreset_req, \
  to_regs   logic [NUM_QUEUES-1:0]       qreset_ack, \
  to_engine logic                        vqs_wr_valid, \
  to_engine logic [QW-1:0]               vqs_wr_queue, \
  to_engine logic [31:0]                 vqs_wr_data, \
  to_engine logic [1:0]                  vqs_wr_half, \
  to_regs   logic [NUM_QUEUES-1:0][15:0] vqs_last_avail, \
  to_regs   logic [NUM_QUEUES-1:0][15:0] vqs_used_idx, \
  to_regs   logic                        fail_valid, \
  to_regs   virtio_pkg::err_e            fail_code, \
  to_regs   logic [QW-1:0]               fail_queue, \
  to_regs   logic                        q_irq_valid, \
  to_regs   logic [QW-1:0]               q_irq_queue, \
  `VNET_LOG_PORTS(to_engine, to_regs)

// The engine's statistics, which the top passes out
`define VNET_STAT_PORTS \
  output logic [31:0]         stat_tx_packets, \
  output logic [31:0]         stat_tx_dropped, \
  output logic [31:0]         stat_rx_packets, \
  output logic [31:0]         stat_rx_no_buffer, \
  output logic [31:0]         stat_rx_dropped
