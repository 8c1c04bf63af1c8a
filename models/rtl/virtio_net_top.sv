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
// NET_F_STATUS, NET_F_MTU, and with NUM_PAIRS > 1 NET_F_CTRL_VQ and
// NET_F_MQ (the control queue takes VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET). Not offered, so not
// implemented: INDIRECT_DESC, IN_ORDER, NOTIFICATION_DATA, MRG_RXBUF, offloads,
// RSS, the other control classes.
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
  input  logic [13:0]         s_axil_awaddr,
  input  logic [2:0]          s_axil_awprot,
  input  logic                s_axil_awvalid,
  output logic                s_axil_awready,
  input  logic [31:0]         s_axil_wdata,
  input  logic [3:0]          s_axil_wstrb,
  input  logic                s_axil_wvalid,
  output logic                s_axil_wready,
  output logic [1:0]          s_axil_bresp,
  output logic                s_axil_bvalid,
  input  logic                s_axil_bready,
  input  logic [13:0]         s_axil_araddr,
  input  logic [2:0]          s_axil_arprot,
  input  logic                s_axil_arvalid,
  output logic                s_axil_arready,
  output logic [31:0]         s_axil_rdata,
  output logic [1:0]          s_axil_rresp,
  output logic                s_axil_rvalid,
  input  logic                s_axil_rready,

  // DMA onto guest memory
  output logic [ID_W-1:0]     m_axi_awid,
  output logic [ADDR_W-1:0]   m_axi_awaddr,
  output logic [7:0]          m_axi_awlen,
  output logic [2:0]          m_axi_awsize,
  output logic [1:0]          m_axi_awburst,
  output logic                m_axi_awlock,
  output logic [3:0]          m_axi_awcache,
  output logic [2:0]          m_axi_awprot,
  output logic                m_axi_awvalid,
  input  logic                m_axi_awready,
  output logic [DATA_W-1:0]   m_axi_wdata,
  output logic [W-1:0]        m_axi_wstrb,
  output logic                m_axi_wlast,
  output logic                m_axi_wvalid,
  input  logic                m_axi_wready,
  input  logic [ID_W-1:0]     m_axi_bid,
  input  logic [1:0]          m_axi_bresp,
  input  logic                m_axi_bvalid,
  output logic                m_axi_bready,
  output logic [ID_W-1:0]     m_axi_arid,
  output logic [ADDR_W-1:0]   m_axi_araddr,
  output logic [7:0]          m_axi_arlen,
  output logic [2:0]          m_axi_arsize,
  output logic [1:0]          m_axi_arburst,
  output logic                m_axi_arlock,
  output logic [3:0]          m_axi_arcache,
  output logic [2:0]          m_axi_arprot,
  output logic                m_axi_arvalid,
  input  logic                m_axi_arready,
  input  logic [ID_W-1:0]     m_axi_rid,
  input  logic [DATA_W-1:0]   m_axi_rdata,
  input  logic [1:0]          m_axi_rresp,
  input  logic                m_axi_rlast,
  input  logic                m_axi_rvalid,
  output logic                m_axi_rready,

  // frames from the wire and to the wire; tdest is the queue pair (receive: the pair the bridge
  // steers the frame to, used while VQ_PAIRS_SET enabled it; transmit: the pair it came from)
  input  logic [DATA_W-1:0]   s_axis_tdata,
  input  logic [W-1:0]        s_axis_tkeep,
  input  logic                s_axis_tlast,
  input  logic                s_axis_tvalid,
  output logic                s_axis_tready,
  input  logic [PAIR_W-1:0]   s_axis_tdest,
  output logic [DATA_W-1:0]   m_axis_tdata,
  output logic [W-1:0]        m_axis_tkeep,
  output logic                m_axis_tlast,
  output logic                m_axis_tvalid,
  input  logic                m_axis_tready,
  output logic [PAIR_W-1:0]   m_axis_tdest,

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
  output logic [31:0]         stat_tx_packets,
  output logic [31:0]         stat_tx_dropped,
  output logic [31:0]         stat_rx_packets,
  output logic [31:0]         stat_rx_no_buffer,
  output logic [31:0]         stat_rx_dropped
);
  localparam logic [63:0] FEATURES =
      (64'd1 << F_VERSION_1) | (64'd1 << F_ORDER_PLATFORM) | (64'd1 << F_RING_RESET)
    | (64'(ACCESS_PLATFORM) << F_ACCESS_PLATFORM) | (64'(EVENT_IDX) << F_EVENT_IDX)
    | (64'(RING_PACKED) << F_RING_PACKED)
    | (64'd1 << F_NET_MAC) | (64'd1 << F_NET_STATUS) | (64'd1 << F_NET_MTU)
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

  virtio_pci_regs #(
    .NUM_QUEUES(NUM_QUEUES), .MAX_QUEUE_SIZE(MAX_QUEUE_SIZE), .MSIX_VECTORS(MSIX_VECTORS),
    .FEATURES(FEATURES), .MAC(MAC), .MTU(MTU), .MAX_VQ_PAIRS(16'(NUM_PAIRS))
  ) u_regs (
    .clk, .rst_n,
    .s_axil_awaddr, .s_axil_awprot, .s_axil_awvalid, .s_axil_awready, .s_axil_wdata, .s_axil_wstrb,
    .s_axil_wvalid, .s_axil_wready, .s_axil_bresp, .s_axil_bvalid, .s_axil_bready, .s_axil_araddr,
    .s_axil_arprot, .s_axil_arvalid, .s_axil_arready, .s_axil_rdata, .s_axil_rresp, .s_axil_rvalid,
    .s_axil_rready,
    .link_up, .msix_enabled, .irq_valid, .irq_vector, .irq_ready, .intx,
    .live, .negotiated, .q_size, .q_desc, .q_driver, .q_device, .q_enable, .kick_valid, .kick_queue,
    .dev_reset_req, .dev_reset_ack, .qreset_req, .qreset_ack, .vqs_wr_valid, .vqs_wr_queue, .vqs_wr_data,
    .vqs_wr_half, .vqs_last_avail, .vqs_used_idx, .fail_valid, .fail_code, .fail_queue, .q_irq_valid,
    .q_irq_queue, .device_status, .last_err_code(last_err), .last_err_queue, .err_count
  );

  vnet_ring_engine #(
    .NUM_PAIRS(NUM_PAIRS), .NUM_QUEUES(NUM_QUEUES), .ADDR_W(ADDR_W), .DATA_W(DATA_W), .ID_W(ID_W), .MAX_BURST(MAX_BURST),
    .BUF_BYTES(BUF_BYTES), .MTU(MTU)
  ) u_engine (
    .clk, .rst_n,
    .live, .negotiated, .q_size, .q_desc, .q_driver, .q_device, .q_enable, .kick_valid, .kick_queue,
    .dev_reset_req, .dev_reset_ack, .qreset_req, .qreset_ack, .vqs_wr_valid, .vqs_wr_queue, .vqs_wr_data,
    .vqs_wr_half, .vqs_last_avail, .vqs_used_idx, .fail_valid, .fail_code, .fail_queue, .q_irq_valid,
    .q_irq_queue, .link_up,
    .s_axis_tdata, .s_axis_tkeep, .s_axis_tlast, .s_axis_tvalid, .s_axis_tready, .s_axis_tdest,
    .m_axis_tdata, .m_axis_tkeep, .m_axis_tlast, .m_axis_tvalid, .m_axis_tready, .m_axis_tdest,
    .m_axi_awid, .m_axi_awaddr, .m_axi_awlen, .m_axi_awsize, .m_axi_awburst, .m_axi_awlock, .m_axi_awcache,
    .m_axi_awprot, .m_axi_awvalid, .m_axi_awready, .m_axi_wdata, .m_axi_wstrb, .m_axi_wlast, .m_axi_wvalid,
    .m_axi_wready, .m_axi_bid, .m_axi_bresp, .m_axi_bvalid, .m_axi_bready, .m_axi_arid, .m_axi_araddr,
    .m_axi_arlen, .m_axi_arsize, .m_axi_arburst, .m_axi_arlock, .m_axi_arcache, .m_axi_arprot, .m_axi_arvalid,
    .m_axi_arready, .m_axi_rid, .m_axi_rdata, .m_axi_rresp, .m_axi_rlast, .m_axi_rvalid, .m_axi_rready,
    .stat_tx_packets, .stat_tx_dropped, .stat_rx_packets, .stat_rx_no_buffer, .stat_rx_dropped
  );
endmodule
