// virtio-net accelerator function: virtio-pci modern register blocks (BAR0, AXI4-Lite slave),
// ring engine (split and packed rings) (AXI4 master onto guest memory), frames on AXI4-Stream, interrupt
// requests as MSI-X vector numbers (valid/ready) plus the INTx level.
//
// What a PCI bridge adds around it: the configuration space with the virtio capabilities
// (see README.md: BAR0 offsets and lengths), the MSI-X table and PBA at BAR0 0x4000/0x5000
// (MSIX_VECTORS entries; it turns irq_vector into the message, honours masking), the IOMMU
// on the AXI4 master path (SLVERR/DECERR for unmapped addresses), and the wire.
//
// Offered features: VERSION_1, ACCESS_PLATFORM, ORDER_PLATFORM, RING_RESET, EVENT_IDX
// (parameter), RING_PACKED (parameter; split or packed rings as negotiated), NET_F_MAC,
// NET_F_STATUS, NET_F_MTU, NET_F_CSUM, NET_F_GUEST_CSUM, NET_F_MRG_RXBUF (parameters), and with
// NUM_PAIRS > 1 NET_F_CTRL_VQ and NET_F_MQ (the control queue takes VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).
// Not offered, so not implemented: INDIRECT_DESC, IN_ORDER, NOTIFICATION_DATA, segmentation
// offloads, RSS, the other control classes.
module virtio_net_top
  import virtio_pkg::*;
#(
  parameter logic [31:0] NUM_PAIRS      = 1,     // queue pairs; > 1 adds the control queue and MQ
  parameter logic [31:0] DATA_W         = 64,    // AXI4 and AXI4-Stream data width, 32..1024
  parameter logic [31:0] ADDR_W         = 64,
  parameter logic [31:0] ID_W           = 4,
  parameter logic [31:0] MAX_BURST      = 16,
  parameter logic [31:0] MAX_QUEUE_SIZE = 256,
  parameter logic [31:0] BUF_BYTES      = 2048,  // per direction; >= 12 + MTU + 18
  parameter logic [47:0] MAC            = 48'h02_00_00_00_00_01,
  parameter logic [15:0] MTU            = 16'd1500,
  parameter bit          EVENT_IDX      = 1'b1,
  parameter bit          ACCESS_PLATFORM = 1'b1, // DMA addresses are IOVAs translated outside
  parameter bit          RING_PACKED    = 1'b1,  // offer VIRTIO_F_RING_PACKED (the layout is chosen at FEATURES_OK)
  parameter bit          CSUM           = 1'b1,  // offer VIRTIO_NET_F_CSUM (transmit checksum completed)
  parameter bit          GUEST_CSUM     = 1'b1,  // offer VIRTIO_NET_F_GUEST_CSUM (receive checksums validated)
  parameter bit          MRG_RXBUF      = 1'b1,  // offer VIRTIO_NET_F_MRG_RXBUF (a frame over several chains)
  localparam bit          HAS_CTRL      = NUM_PAIRS > 1,
  localparam logic [31:0] NUM_QUEUES    = 2 * NUM_PAIRS + (HAS_CTRL ? 1 : 0),
  parameter logic [31:0] MSIX_VECTORS   = NUM_QUEUES + 1,
  localparam logic [31:0] W             = DATA_W / 8,
  localparam logic [31:0] QW            = NUM_QUEUES > 1 ? $clog2(NUM_QUEUES) : 1,
  localparam logic [31:0] PAIR_W        = NUM_PAIRS > 1 ? $clog2(NUM_PAIRS) : 1
) (
  input  logic                clk,
  input  logic                rst_n,

  // BAR0 (offsets 0x0000..0x3FFF)
  `VNET_AXIL_SLAVE_PORTS,

  // DMA onto guest memory
  `VNET_AXI4_MASTER_PORTS,

  // frames from the wire and to the wire; tdest is the queue pair (receive: the pair the bridge
  // steers the frame to, used while VQ_PAIRS_SET enabled it; transmit: the pair it came from)
  `VNET_AXIS_PORTS(s_axis, input, output),
  `VNET_AXIS_PORTS(m_axis, output, input),

  // interrupts
  output logic                irq_valid,
  output logic [15:0]         irq_vector,
  input  logic                irq_ready,
  output logic                intx,
  input  logic                msix_enabled,

  input  logic                link_up,

  // status for a bridge or bench
  output logic [7:0]          device_status,
  output logic [3:0]          last_err_code,
  output logic [QW-1:0]       last_err_queue,
  output logic [15:0]         err_count,
  `VNET_STAT_PORTS
);
  localparam logic [63:0] FEATURES =
      (64'd1 << F_VERSION_1) | (64'd1 << F_ORDER_PLATFORM) | (64'd1 << F_RING_RESET)
    | (64'(ACCESS_PLATFORM) << F_ACCESS_PLATFORM) | (64'(EVENT_IDX) << F_EVENT_IDX)
    | (64'(RING_PACKED) << F_RING_PACKED)
    | (64'd1 << F_NET_MAC) | (64'd1 << F_NET_STATUS) | (64'd1 << F_NET_MTU)
    | (64'(CSUM) << F_NET_CSUM) | (64'(GUEST_CSUM) << F_NET_GUEST_CSUM) | (64'(MRG_RXBUF) << F_NET_MRG_RXBUF)
    | (64'(HAS_CTRL) << F_NET_CTRL_VQ) | (64'(HAS_CTRL) << F_NET_MQ);

  // Parameter checks at elaboration; Icarus 11 has no elaboration system tasks, so there the same
  // check stops the simulation at time 0.
`ifdef __ICARUS__
  `define VNET_PARAM_ERROR(msg) initial $fatal(1, msg);
`else
  `define VNET_PARAM_ERROR(msg) $error(msg);
`endif
  if (NUM_PAIRS < 1 || NUM_PAIRS > 256) begin : g_pairs
    `VNET_PARAM_ERROR("virtio_net_top: NUM_PAIRS must be 1..256")
  end
  if (BUF_BYTES < 32'(MTU) + 30 || (BUF_BYTES & (BUF_BYTES - 1)) != 0) begin : g_buf
    `VNET_PARAM_ERROR("virtio_net_top: BUF_BYTES must be a power of two holding header + MTU + 18")
  end
  if (DATA_W < 32 || (DATA_W & (DATA_W - 1)) != 0) begin : g_width
    `VNET_PARAM_ERROR("virtio_net_top: DATA_W must be a power of two >= 32")
  end
`undef VNET_PARAM_ERROR

  // the register block's and the ring engine's VNET_ENGINE_PORTS, which .* connects by name
  logic                        live, kick_valid, dev_reset_req, dev_reset_ack, vqs_wr_valid;
  logic                        fail_valid, q_irq_valid;
  logic [63:0]                 negotiated;
  logic [NUM_QUEUES-1:0][15:0] q_size, vqs_last_avail, vqs_used_idx;
  logic [NUM_QUEUES-1:0][63:0] q_desc, q_driver, q_device;
  logic [NUM_QUEUES-1:0]       q_enable, qreset_req, qreset_ack;
  logic [QW-1:0]               kick_queue, vqs_wr_queue, fail_queue, q_irq_queue;
  logic [31:0]                 vqs_wr_data;
  logic [1:0]                  vqs_wr_half;
  err_e                        fail_code, last_err;
  assign last_err_code = last_err;
  // VNET_LOG_PORTS: the dirty page log block's registers (u_regs) and its write unit (u_engine's DMA)
  logic                        log_enable, log_busy, log_overflow, log_fault;
  logic [63:0]                 log_base;
  logic [31:0]                 log_pages;

  virtio_pci_regs #(
    .NUM_QUEUES(NUM_QUEUES), .MAX_QUEUE_SIZE(MAX_QUEUE_SIZE), .MSIX_VECTORS(MSIX_VECTORS),
    .FEATURES(FEATURES), .MAC(MAC), .MTU(MTU), .MAX_VQ_PAIRS(16'(NUM_PAIRS))
  ) u_regs (.*, .last_err_code(last_err));  // implicit: every other port by its name

  vnet_ring_engine #(
    .NUM_PAIRS(NUM_PAIRS), .NUM_QUEUES(NUM_QUEUES), .ADDR_W(ADDR_W), .DATA_W(DATA_W), .ID_W(ID_W), .MAX_BURST(MAX_BURST),
    .BUF_BYTES(BUF_BYTES), .MTU(MTU)
  ) u_engine (.*);
endmodule
