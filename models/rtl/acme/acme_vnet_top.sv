// ACME VNET: a virtio-net PCI function as a vendor would deliver it (standing in for one in the
// bench). Same virtio core as the project's design (the licensed virtio_pci_regs / vnet_ring_engine
// IP, instantiated unchanged), but a different shell around it:
//
//   BAR0 (0x4000, AXI4-Lite slave csr_*)  0x0000 vendor block: ID "ACME", VERSION, SCRATCH,
//                                          0x100 + 4q vq state, 0x800 dirty page log
//                                          0x2000 MSI-X table, 0x3000 PBA (served here)
//   BAR2 (0x2000, AXI4 slave vio_*)        0x000 common cfg, 0x400 ISR, 0x600 device cfg,
//                                          0x1000 + 4q doorbells (notify_off_multiplier 4)
//   guest memory: AXI4 master dma_* (128-bit data, 48-bit address, ID 6 bits, ID 0 driven)
//   MSI-X messages: AXI4 master msi_* (32-bit data, 64-bit address, ID 2 bits): the function writes
//                   its own messages (acme_msix.sv); msix_en / msix_fmask come from config space
//   frames: AXI4-Stream rx_axis_* in, tx_axis_* out, one 128-bit lane per queue pair, packed (lane i
//           of tdata at [128*i +: 128], of tvalid at bit i); acme_axis_lanes.sv puts them on the IP's
//           one tdest port
//   intx_o INTx level, phy_link link state, idle = no work of its own (see the end)
//
// Reset: aresetn, active low; asserted asynchronously (as the IP's flops are), released on aclk by the
// system. It is also the PCI function-level reset (MSI-X table masked, PBA clear).
module acme_vnet_top
  import virtio_pkg::*;
#(
  parameter int NUM_PAIRS       = 1,
  parameter int MAX_QUEUE_SIZE  = 1024,
  parameter int BUF_BYTES       = 2048,
  parameter logic [47:0] MAC             = 48'h02_AC_4E_00_00_01,
  parameter logic [15:0] MTU             = 16'd1500,
  parameter bit          EVENT_IDX       = 1'b1,
  parameter bit          ACCESS_PLATFORM = 1'b1,
  parameter bit          RING_PACKED     = 1'b1,
  parameter bit          CSUM            = 1'b1,
  parameter bit          GUEST_CSUM      = 1'b1,
  parameter bit          MRG_RXBUF       = 1'b1,
  parameter int DMA_DATA_W      = 128,
  parameter int DMA_ADDR_W      = 48,
  parameter int DMA_ID_W        = 6,
  parameter int DMA_MAX_BURST   = 16,
  localparam bit          HAS_CTRL       = NUM_PAIRS > 1,
  localparam int NUM_QUEUES     = 2 * NUM_PAIRS + (HAS_CTRL ? 1 : 0),
  parameter int MSIX_VECTORS    = NUM_QUEUES + 1,
  localparam int DMA_STRB_W     = DMA_DATA_W / 8,
  localparam int QW             = NUM_QUEUES > 1 ? $clog2(NUM_QUEUES) : 1,
  localparam int PAIR_W         = NUM_PAIRS > 1 ? $clog2(NUM_PAIRS) : 1
) (
  input  logic                  aclk,
  input  logic                  aresetn,

  // ---- BAR0: AXI4-Lite slave ------------------------------------------------------------------
  input  logic [13:0]           csr_awaddr,
  input  logic                  csr_awvalid,
  output logic                  csr_awready,
  input  logic [31:0]           csr_wdata,
  input  logic [3:0]            csr_wstrb,
  input  logic                  csr_wvalid,
  output logic                  csr_wready,
  output logic [1:0]            csr_bresp,
  output logic                  csr_bvalid,
  input  logic                  csr_bready,
  input  logic [13:0]           csr_araddr,
  input  logic                  csr_arvalid,
  output logic                  csr_arready,
  output logic [31:0]           csr_rdata,
  output logic [1:0]            csr_rresp,
  output logic                  csr_rvalid,
  input  logic                  csr_rready,

  // ---- BAR2: AXI4 slave -----------------------------------------------------------------------
  input  logic [3:0]            vio_awid,
  input  logic [12:0]           vio_awaddr,
  input  logic [7:0]            vio_awlen,
  input  logic [2:0]            vio_awsize,
  input  logic [1:0]            vio_awburst,
  input  logic                  vio_awvalid,
  output logic                  vio_awready,
  input  logic [31:0]           vio_wdata,
  input  logic [3:0]            vio_wstrb,
  input  logic                  vio_wlast,
  input  logic                  vio_wvalid,
  output logic                  vio_wready,
  output logic [3:0]            vio_bid,
  output logic [1:0]            vio_bresp,
  output logic                  vio_bvalid,
  input  logic                  vio_bready,
  input  logic [3:0]            vio_arid,
  input  logic [12:0]           vio_araddr,
  input  logic [7:0]            vio_arlen,
  input  logic [2:0]            vio_arsize,
  input  logic [1:0]            vio_arburst,
  input  logic                  vio_arvalid,
  output logic                  vio_arready,
  output logic [3:0]            vio_rid,
  output logic [31:0]           vio_rdata,
  output logic [1:0]            vio_rresp,
  output logic                  vio_rlast,
  output logic                  vio_rvalid,
  input  logic                  vio_rready,

  // ---- guest memory: AXI4 master --------------------------------------------------------------
  output logic [DMA_ID_W-1:0]   dma_awid,
  output logic [DMA_ADDR_W-1:0] dma_awaddr,
  output logic [7:0]            dma_awlen,
  output logic [2:0]            dma_awsize,
  output logic [1:0]            dma_awburst,
  output logic                  dma_awlock,
  output logic [3:0]            dma_awcache,
  output logic [2:0]            dma_awprot,
  output logic                  dma_awvalid,
  input  logic                  dma_awready,
  output logic [DMA_DATA_W-1:0] dma_wdata,
  output logic [DMA_STRB_W-1:0] dma_wstrb,
  output logic                  dma_wlast,
  output logic                  dma_wvalid,
  input  logic                  dma_wready,
  input  logic [DMA_ID_W-1:0]   dma_bid,
  input  logic [1:0]            dma_bresp,
  input  logic                  dma_bvalid,
  output logic                  dma_bready,
  output logic [DMA_ID_W-1:0]   dma_arid,
  output logic [DMA_ADDR_W-1:0] dma_araddr,
  output logic [7:0]            dma_arlen,
  output logic [2:0]            dma_arsize,
  output logic [1:0]            dma_arburst,
  output logic                  dma_arlock,
  output logic [3:0]            dma_arcache,
  output logic [2:0]            dma_arprot,
  output logic                  dma_arvalid,
  input  logic                  dma_arready,
  input  logic [DMA_ID_W-1:0]   dma_rid,
  input  logic [DMA_DATA_W-1:0] dma_rdata,
  input  logic [1:0]            dma_rresp,
  input  logic                  dma_rlast,
  input  logic                  dma_rvalid,
  output logic                  dma_rready,

  // ---- MSI-X message writes: AXI4 master ------------------------------------------------------
  output logic [1:0]            msi_awid,
  output logic [63:0]           msi_awaddr,
  output logic [7:0]            msi_awlen,
  output logic [2:0]            msi_awsize,
  output logic [1:0]            msi_awburst,
  output logic                  msi_awlock,
  output logic [3:0]            msi_awcache,
  output logic [2:0]            msi_awprot,
  output logic                  msi_awvalid,
  input  logic                  msi_awready,
  output logic [31:0]           msi_wdata,
  output logic [3:0]            msi_wstrb,
  output logic                  msi_wlast,
  output logic                  msi_wvalid,
  input  logic                  msi_wready,
  input  logic [1:0]            msi_bid,
  input  logic [1:0]            msi_bresp,
  input  logic                  msi_bvalid,
  output logic                  msi_bready,
  output logic [1:0]            msi_arid,
  output logic [63:0]           msi_araddr,
  output logic [7:0]            msi_arlen,
  output logic [2:0]            msi_arsize,
  output logic [1:0]            msi_arburst,
  output logic                  msi_arlock,
  output logic [3:0]            msi_arcache,
  output logic [2:0]            msi_arprot,
  output logic                  msi_arvalid,
  input  logic                  msi_arready,
  input  logic [1:0]            msi_rid,
  input  logic [31:0]           msi_rdata,
  input  logic [1:0]            msi_rresp,
  input  logic                  msi_rlast,
  input  logic                  msi_rvalid,
  output logic                  msi_rready,

  // ---- frames ---------------------------------------------------------------------------------
  input  logic [NUM_PAIRS*DMA_DATA_W-1:0] rx_axis_tdata,
  input  logic [NUM_PAIRS*DMA_STRB_W-1:0] rx_axis_tkeep,
  input  logic [NUM_PAIRS-1:0]            rx_axis_tlast,
  input  logic [NUM_PAIRS-1:0]            rx_axis_tvalid,
  output logic [NUM_PAIRS-1:0]            rx_axis_tready,
  output logic [NUM_PAIRS*DMA_DATA_W-1:0] tx_axis_tdata,
  output logic [NUM_PAIRS*DMA_STRB_W-1:0] tx_axis_tkeep,
  output logic [NUM_PAIRS-1:0]            tx_axis_tlast,
  output logic [NUM_PAIRS-1:0]            tx_axis_tvalid,
  input  logic [NUM_PAIRS-1:0]            tx_axis_tready,

  // ---- interrupts, link, power ----------------------------------------------------------------
  input  logic                  msix_en,      // MSI-X Enable of the MSI-X capability
  input  logic                  msix_fmask,   // Function Mask of the MSI-X capability
  input  logic                  pci_bme,      // Bus Master Enable of the command register: no message without it
  output logic                  intx_o,
  input  logic                  phy_link,
  output logic                  idle,

  // ---- status / debug -------------------------------------------------------------------------
  output logic [7:0]            dbg_dev_status,
  output logic [15:0]           dbg_err_count,
  output logic [3:0]            dbg_err_code,
  output logic [QW-1:0]         dbg_err_queue,
  output logic [31:0]           dbg_tx_pkts,
  output logic [31:0]           dbg_tx_drop,
  output logic [31:0]           dbg_rx_pkts,
  output logic [31:0]           dbg_rx_nobuf,
  output logic [31:0]           dbg_rx_drop
);
  // The offer: the same feature set as the project's virtio_net_top.
  localparam logic [63:0] FEATURES =
      (64'd1 << F_VERSION_1) | (64'd1 << F_ORDER_PLATFORM) | (64'd1 << F_RING_RESET)
    | (64'(ACCESS_PLATFORM) << F_ACCESS_PLATFORM) | (64'(EVENT_IDX) << F_EVENT_IDX)
    | (64'(RING_PACKED) << F_RING_PACKED)
    | (64'd1 << F_NET_MAC) | (64'd1 << F_NET_STATUS) | (64'd1 << F_NET_MTU)
    | (64'(CSUM) << F_NET_CSUM) | (64'(GUEST_CSUM) << F_NET_GUEST_CSUM) | (64'(MRG_RXBUF) << F_NET_MRG_RXBUF)
    | (64'(HAS_CTRL) << F_NET_CTRL_VQ) | (64'(HAS_CTRL) << F_NET_MQ);

  // ---- parameter checks (Icarus 11 has no elaboration-time $error: stop at time 0 there) -------
`ifdef __ICARUS__
  `define ACME_BAD_PARAM(msg) initial $fatal(1, msg);
`else
  `define ACME_BAD_PARAM(msg) $error(msg);
`endif
  if (NUM_PAIRS < 1 || NUM_PAIRS > 256) begin : chk_pairs
    `ACME_BAD_PARAM("acme_vnet_top: NUM_PAIRS must be 1..256")
  end
  if (MAX_QUEUE_SIZE < 1 || MAX_QUEUE_SIZE > 32768 || (MAX_QUEUE_SIZE & (MAX_QUEUE_SIZE - 1)) != 0) begin : chk_qsize
    `ACME_BAD_PARAM("acme_vnet_top: MAX_QUEUE_SIZE must be a power of two <= 32768")
  end
  if (BUF_BYTES < 32'(MTU) + 30 || (BUF_BYTES & (BUF_BYTES - 1)) != 0) begin : chk_buf
    `ACME_BAD_PARAM("acme_vnet_top: BUF_BYTES must be a power of two holding header + MTU + 18")
  end
  if (DMA_DATA_W < 32 || (DMA_DATA_W & (DMA_DATA_W - 1)) != 0) begin : chk_width
    `ACME_BAD_PARAM("acme_vnet_top: DMA_DATA_W must be a power of two >= 32")
  end
  if (MSIX_VECTORS < 1 || MSIX_VECTORS > 256) begin : chk_vectors
    `ACME_BAD_PARAM("acme_vnet_top: MSIX_VECTORS must be 1..256 (the table window at 0x2000 is 4 KiB)")
  end
`undef ACME_BAD_PARAM

  // ---- between the shell and the virtio core -------------------------------------------------
  // BAR ports -> decoder
  logic        b0_valid, b0_write, b0_done;
  logic [13:0] b0_addr;
  logic [31:0] b0_wdata;
  logic [3:0]  b0_wstrb;
  logic        b2_valid, b2_write, b2_done;
  logic [12:0] b2_addr;
  logic [31:0] b2_wdata;
  logic [3:0]  b2_wstrb;
  logic [31:0] bar_rdata;
  logic        csr_quiet, vio_quiet, dec_quiet, msix_quiet;
  // decoder -> virtio core (AXI4-Lite)
  logic [13:0] core_awaddr, core_araddr;
  logic        core_awvalid, core_awready, core_wvalid, core_wready, core_bvalid, core_bready;
  logic        core_arvalid, core_arready, core_rvalid, core_rready;
  logic [31:0] core_wdata, core_rdata;
  logic [3:0]  core_wstrb;
  logic [1:0]  core_bresp, core_rresp;
  // decoder -> MSI-X table
  logic        tb_write;
  logic [12:0] tb_addr;
  logic [31:0] tb_wdata, tb_rdata;
  logic [3:0]  tb_wstrb;
  // virtio core -> MSI-X unit
  logic        irq_req, irq_ack;
  logic [15:0] irq_vec;

  // virtio core <-> ring engine
  logic                        eng_live, eng_kick_valid, eng_reset_req, eng_reset_ack, eng_vqs_wr_valid;
  logic                        eng_fail_valid, eng_q_irq_valid;
  logic [63:0]                 eng_negotiated;
  logic [NUM_QUEUES-1:0][15:0] eng_q_size, eng_vqs_last_avail, eng_vqs_used_idx;
  logic [NUM_QUEUES-1:0][63:0] eng_q_desc, eng_q_driver, eng_q_device;
  logic [NUM_QUEUES-1:0]       eng_q_enable, eng_qreset_req, eng_qreset_ack;
  logic [QW-1:0]               eng_kick_queue, eng_vqs_wr_queue, eng_fail_queue, eng_q_irq_queue;
  logic [31:0]                 eng_vqs_wr_data;
  logic [1:0]                  eng_vqs_wr_half;
  err_e                        eng_fail_code, core_last_err;
  logic                        log_enable, log_busy, log_overflow, log_fault;
  logic [63:0]                 log_base;
  logic [31:0]                 log_pages;

  // ---- BAR0 and BAR2 front ends, decoder -----------------------------------------------------
  acme_axil_slave #(.AW(14)) u_csr_port (
    .aclk       (aclk),
    .aresetn    (aresetn),
    .s_awaddr   (csr_awaddr),
    .s_awvalid  (csr_awvalid),
    .s_awready  (csr_awready),
    .s_wdata    (csr_wdata),
    .s_wstrb    (csr_wstrb),
    .s_wvalid   (csr_wvalid),
    .s_wready   (csr_wready),
    .s_bresp    (csr_bresp),
    .s_bvalid   (csr_bvalid),
    .s_bready   (csr_bready),
    .s_araddr   (csr_araddr),
    .s_arvalid  (csr_arvalid),
    .s_arready  (csr_arready),
    .s_rdata    (csr_rdata),
    .s_rresp    (csr_rresp),
    .s_rvalid   (csr_rvalid),
    .s_rready   (csr_rready),
    .rq_valid   (b0_valid),
    .rq_write   (b0_write),
    .rq_addr    (b0_addr),
    .rq_wdata   (b0_wdata),
    .rq_wstrb   (b0_wstrb),
    .rq_done    (b0_done),
    .rq_rdata   (bar_rdata),
    .quiet      (csr_quiet)
  );

  acme_axi4_slave #(.AW(13), .IDW(4)) u_vio_port (
    .aclk       (aclk),
    .aresetn    (aresetn),
    .s_awid     (vio_awid),
    .s_awaddr   (vio_awaddr),
    .s_awlen    (vio_awlen),
    .s_awsize   (vio_awsize),
    .s_awburst  (vio_awburst),
    .s_awvalid  (vio_awvalid),
    .s_awready  (vio_awready),
    .s_wdata    (vio_wdata),
    .s_wstrb    (vio_wstrb),
    .s_wlast    (vio_wlast),
    .s_wvalid   (vio_wvalid),
    .s_wready   (vio_wready),
    .s_bid      (vio_bid),
    .s_bresp    (vio_bresp),
    .s_bvalid   (vio_bvalid),
    .s_bready   (vio_bready),
    .s_arid     (vio_arid),
    .s_araddr   (vio_araddr),
    .s_arlen    (vio_arlen),
    .s_arsize   (vio_arsize),
    .s_arburst  (vio_arburst),
    .s_arvalid  (vio_arvalid),
    .s_arready  (vio_arready),
    .s_rid      (vio_rid),
    .s_rdata    (vio_rdata),
    .s_rresp    (vio_rresp),
    .s_rlast    (vio_rlast),
    .s_rvalid   (vio_rvalid),
    .s_rready   (vio_rready),
    .rq_valid   (b2_valid),
    .rq_write   (b2_write),
    .rq_addr    (b2_addr),
    .rq_wdata   (b2_wdata),
    .rq_wstrb   (b2_wstrb),
    .rq_done    (b2_done),
    .rq_rdata   (bar_rdata),
    .quiet      (vio_quiet)
  );

  acme_bar_decode #(.NUM_QUEUES(NUM_QUEUES)) u_decode (
    .aclk         (aclk),
    .aresetn      (aresetn),
    .b0_valid     (b0_valid),
    .b0_write     (b0_write),
    .b0_addr      (b0_addr),
    .b0_wdata     (b0_wdata),
    .b0_wstrb     (b0_wstrb),
    .b0_done      (b0_done),
    .b2_valid     (b2_valid),
    .b2_write     (b2_write),
    .b2_addr      (b2_addr),
    .b2_wdata     (b2_wdata),
    .b2_wstrb     (b2_wstrb),
    .b2_done      (b2_done),
    .rsp_rdata    (bar_rdata),
    .core_awaddr  (core_awaddr),
    .core_awvalid (core_awvalid),
    .core_awready (core_awready),
    .core_wdata   (core_wdata),
    .core_wstrb   (core_wstrb),
    .core_wvalid  (core_wvalid),
    .core_wready  (core_wready),
    .core_bresp   (core_bresp),
    .core_bvalid  (core_bvalid),
    .core_bready  (core_bready),
    .core_araddr  (core_araddr),
    .core_arvalid (core_arvalid),
    .core_arready (core_arready),
    .core_rdata   (core_rdata),
    .core_rresp   (core_rresp),
    .core_rvalid  (core_rvalid),
    .core_rready  (core_rready),
    .tb_write     (tb_write),
    .tb_addr      (tb_addr),
    .tb_wdata     (tb_wdata),
    .tb_wstrb     (tb_wstrb),
    .tb_rdata     (tb_rdata),
    .quiet        (dec_quiet)
  );

  // ---- MSI-X unit ----------------------------------------------------------------------------
  acme_msix #(.VECTORS(MSIX_VECTORS)) u_msix (
    .aclk       (aclk),
    .aresetn    (aresetn),
    .msix_en    (msix_en),
    .msix_fmask (msix_fmask),
    .bus_master (pci_bme),
    .irq_valid  (irq_req),
    .irq_vector (irq_vec),
    .irq_ready  (irq_ack),
    .tb_write   (tb_write),
    .tb_addr    (tb_addr),
    .tb_wdata   (tb_wdata),
    .tb_wstrb   (tb_wstrb),
    .tb_rdata   (tb_rdata),
    .m_awid     (msi_awid),
    .m_awaddr   (msi_awaddr),
    .m_awlen    (msi_awlen),
    .m_awsize   (msi_awsize),
    .m_awburst  (msi_awburst),
    .m_awlock   (msi_awlock),
    .m_awcache  (msi_awcache),
    .m_awprot   (msi_awprot),
    .m_awvalid  (msi_awvalid),
    .m_awready  (msi_awready),
    .m_wdata    (msi_wdata),
    .m_wstrb    (msi_wstrb),
    .m_wlast    (msi_wlast),
    .m_wvalid   (msi_wvalid),
    .m_wready   (msi_wready),
    .m_bid      (msi_bid),
    .m_bresp    (msi_bresp),
    .m_bvalid   (msi_bvalid),
    .m_bready   (msi_bready),
    .m_arid     (msi_arid),
    .m_araddr   (msi_araddr),
    .m_arlen    (msi_arlen),
    .m_arsize   (msi_arsize),
    .m_arburst  (msi_arburst),
    .m_arlock   (msi_arlock),
    .m_arcache  (msi_arcache),
    .m_arprot   (msi_arprot),
    .m_arvalid  (msi_arvalid),
    .m_arready  (msi_arready),
    .m_rid      (msi_rid),
    .m_rdata    (msi_rdata),
    .m_rresp    (msi_rresp),
    .m_rlast    (msi_rlast),
    .m_rvalid   (msi_rvalid),
    .m_rready   (msi_rready),
    .quiet      (msix_quiet)
  );

  // ---- licensed virtio core: register blocks + interrupt unit ---------------------------------
  virtio_pci_regs #(
    .NUM_QUEUES     (32'(NUM_QUEUES)),
    .MAX_QUEUE_SIZE (32'(MAX_QUEUE_SIZE)),
    .MSIX_VECTORS   (32'(MSIX_VECTORS)),
    .FEATURES       (FEATURES),
    .MAC            (MAC),
    .MTU            (MTU),
    .MAX_VQ_PAIRS   (16'(NUM_PAIRS))
  ) u_regs (
    .clk            (aclk),
    .rst_n          (aresetn),
    .s_axil_awaddr  (core_awaddr),
    .s_axil_awprot  (3'b000),
    .s_axil_awvalid (core_awvalid),
    .s_axil_awready (core_awready),
    .s_axil_wdata   (core_wdata),
    .s_axil_wstrb   (core_wstrb),
    .s_axil_wvalid  (core_wvalid),
    .s_axil_wready  (core_wready),
    .s_axil_bresp   (core_bresp),
    .s_axil_bvalid  (core_bvalid),
    .s_axil_bready  (core_bready),
    .s_axil_araddr  (core_araddr),
    .s_axil_arprot  (3'b000),
    .s_axil_arvalid (core_arvalid),
    .s_axil_arready (core_arready),
    .s_axil_rdata   (core_rdata),
    .s_axil_rresp   (core_rresp),
    .s_axil_rvalid  (core_rvalid),
    .s_axil_rready  (core_rready),
    .link_up        (phy_link),
    .msix_enabled   (msix_en),
    .irq_valid      (irq_req),
    .irq_vector     (irq_vec),
    .irq_ready      (irq_ack),
    .intx           (intx_o),
    .live           (eng_live),
    .negotiated     (eng_negotiated),
    .q_size         (eng_q_size),
    .q_desc         (eng_q_desc),
    .q_driver       (eng_q_driver),
    .q_device       (eng_q_device),
    .q_enable       (eng_q_enable),
    .kick_valid     (eng_kick_valid),
    .kick_queue     (eng_kick_queue),
    .dev_reset_req  (eng_reset_req),
    .dev_reset_ack  (eng_reset_ack),
    .qreset_req     (eng_qreset_req),
    .qreset_ack     (eng_qreset_ack),
    .vqs_wr_valid   (eng_vqs_wr_valid),
    .vqs_wr_queue   (eng_vqs_wr_queue),
    .vqs_wr_data    (eng_vqs_wr_data),
    .vqs_wr_half    (eng_vqs_wr_half),
    .vqs_last_avail (eng_vqs_last_avail),
    .vqs_used_idx   (eng_vqs_used_idx),
    .fail_valid     (eng_fail_valid),
    .fail_code      (eng_fail_code),
    .fail_queue     (eng_fail_queue),
    .q_irq_valid    (eng_q_irq_valid),
    .q_irq_queue    (eng_q_irq_queue),
    .log_enable     (log_enable),
    .log_base       (log_base),
    .log_pages      (log_pages),
    .log_busy       (log_busy),
    .log_overflow   (log_overflow),
    .log_fault      (log_fault),
    .device_status  (dbg_dev_status),
    .last_err_code  (core_last_err),
    .last_err_queue (dbg_err_queue),
    .err_count      (dbg_err_count)
  );
  assign dbg_err_code = core_last_err;

  // ---- licensed virtio core: ring engine ------------------------------------------------------
  // ---- frame lanes <-> the IP's tdest port ----------------------------------------------------
  logic [DMA_DATA_W-1:0] ip_rx_tdata, ip_tx_tdata;
  logic [DMA_STRB_W-1:0] ip_rx_tkeep, ip_tx_tkeep;
  logic                  ip_rx_tlast, ip_rx_tvalid, ip_rx_tready, ip_tx_tlast, ip_tx_tvalid, ip_tx_tready;
  logic [PAIR_W-1:0]     ip_rx_tdest, ip_tx_tdest;
  logic                  lanes_quiet;

  acme_axis_lanes #(
    .NUM_PAIRS (NUM_PAIRS),
    .W         (DMA_DATA_W)
  ) u_lanes (
    .aclk           (aclk),
    .aresetn        (aresetn),
    .rx_lane_tdata  (rx_axis_tdata),
    .rx_lane_tkeep  (rx_axis_tkeep),
    .rx_lane_tlast  (rx_axis_tlast),
    .rx_lane_tvalid (rx_axis_tvalid),
    .rx_lane_tready (rx_axis_tready),
    .rx_ip_tdata    (ip_rx_tdata),
    .rx_ip_tkeep    (ip_rx_tkeep),
    .rx_ip_tlast    (ip_rx_tlast),
    .rx_ip_tvalid   (ip_rx_tvalid),
    .rx_ip_tready   (ip_rx_tready),
    .rx_ip_tdest    (ip_rx_tdest),
    .tx_ip_tdata    (ip_tx_tdata),
    .tx_ip_tkeep    (ip_tx_tkeep),
    .tx_ip_tlast    (ip_tx_tlast),
    .tx_ip_tvalid   (ip_tx_tvalid),
    .tx_ip_tready   (ip_tx_tready),
    .tx_ip_tdest    (ip_tx_tdest),
    .tx_lane_tdata  (tx_axis_tdata),
    .tx_lane_tkeep  (tx_axis_tkeep),
    .tx_lane_tlast  (tx_axis_tlast),
    .tx_lane_tvalid (tx_axis_tvalid),
    .tx_lane_tready (tx_axis_tready),
    .quiet          (lanes_quiet)
  );

  vnet_ring_engine #(
    .NUM_PAIRS  (32'(NUM_PAIRS)),
    .NUM_QUEUES (32'(NUM_QUEUES)),
    .ADDR_W     (32'(DMA_ADDR_W)),
    .DATA_W     (32'(DMA_DATA_W)),
    .ID_W       (32'(DMA_ID_W)),
    .MAX_BURST  (32'(DMA_MAX_BURST)),
    .BUF_BYTES  (32'(BUF_BYTES)),
    .MTU        (MTU)
  ) u_engine (
    .clk               (aclk),
    .rst_n             (aresetn),
    .live              (eng_live),
    .negotiated        (eng_negotiated),
    .q_size            (eng_q_size),
    .q_desc            (eng_q_desc),
    .q_driver          (eng_q_driver),
    .q_device          (eng_q_device),
    .q_enable          (eng_q_enable),
    .kick_valid        (eng_kick_valid),
    .kick_queue        (eng_kick_queue),
    .dev_reset_req     (eng_reset_req),
    .dev_reset_ack     (eng_reset_ack),
    .qreset_req        (eng_qreset_req),
    .qreset_ack        (eng_qreset_ack),
    .vqs_wr_valid      (eng_vqs_wr_valid),
    .vqs_wr_queue      (eng_vqs_wr_queue),
    .vqs_wr_data       (eng_vqs_wr_data),
    .vqs_wr_half       (eng_vqs_wr_half),
    .vqs_last_avail    (eng_vqs_last_avail),
    .vqs_used_idx      (eng_vqs_used_idx),
    .fail_valid        (eng_fail_valid),
    .fail_code         (eng_fail_code),
    .fail_queue        (eng_fail_queue),
    .q_irq_valid       (eng_q_irq_valid),
    .q_irq_queue       (eng_q_irq_queue),
    .log_enable        (log_enable),
    .log_base          (log_base),
    .log_pages         (log_pages),
    .log_busy          (log_busy),
    .log_overflow      (log_overflow),
    .log_fault         (log_fault),
    .link_up           (phy_link),
    .s_axis_tdata      (ip_rx_tdata),
    .s_axis_tkeep      (ip_rx_tkeep),
    .s_axis_tlast      (ip_rx_tlast),
    .s_axis_tvalid     (ip_rx_tvalid),
    .s_axis_tready     (ip_rx_tready),
    .s_axis_tdest      (ip_rx_tdest),
    .m_axis_tdata      (ip_tx_tdata),
    .m_axis_tkeep      (ip_tx_tkeep),
    .m_axis_tlast      (ip_tx_tlast),
    .m_axis_tvalid     (ip_tx_tvalid),
    .m_axis_tready     (ip_tx_tready),
    .m_axis_tdest      (ip_tx_tdest),
    .m_axi_awid        (dma_awid),
    .m_axi_awaddr      (dma_awaddr),
    .m_axi_awlen       (dma_awlen),
    .m_axi_awsize      (dma_awsize),
    .m_axi_awburst     (dma_awburst),
    .m_axi_awlock      (dma_awlock),
    .m_axi_awcache     (dma_awcache),
    .m_axi_awprot      (dma_awprot),
    .m_axi_awvalid     (dma_awvalid),
    .m_axi_awready     (dma_awready),
    .m_axi_wdata       (dma_wdata),
    .m_axi_wstrb       (dma_wstrb),
    .m_axi_wlast       (dma_wlast),
    .m_axi_wvalid      (dma_wvalid),
    .m_axi_wready      (dma_wready),
    .m_axi_bid         (dma_bid),
    .m_axi_bresp       (dma_bresp),
    .m_axi_bvalid      (dma_bvalid),
    .m_axi_bready      (dma_bready),
    .m_axi_arid        (dma_arid),
    .m_axi_araddr      (dma_araddr),
    .m_axi_arlen       (dma_arlen),
    .m_axi_arsize      (dma_arsize),
    .m_axi_arburst     (dma_arburst),
    .m_axi_arlock      (dma_arlock),
    .m_axi_arcache     (dma_arcache),
    .m_axi_arprot      (dma_arprot),
    .m_axi_arvalid     (dma_arvalid),
    .m_axi_arready     (dma_arready),
    .m_axi_rid         (dma_rid),
    .m_axi_rdata       (dma_rdata),
    .m_axi_rresp       (dma_rresp),
    .m_axi_rlast       (dma_rlast),
    .m_axi_rvalid      (dma_rvalid),
    .m_axi_rready      (dma_rready),
    .stat_tx_packets   (dbg_tx_pkts),
    .stat_tx_dropped   (dbg_tx_drop),
    .stat_rx_packets   (dbg_rx_pkts),
    .stat_rx_no_buffer (dbg_rx_nobuf),
    .stat_rx_dropped   (dbg_rx_drop)
  );

  // ---- idle ------------------------------------------------------------------------------------
  // The function has no work of its own (a bridge may stop the clock until a doorbell, a frame or a
  // register access): the conditions the project's bridge reads from the same IP
  // (models/rtl/harness/vb_design.h: engine in E_IDLE (0) with no kick pending, no frame stored or
  // streaming; core with no queue or configuration interrupt pending, no device or queue reset under
  // way, link change taken), no interrupt request offered to the MSI-X unit, the MSI-X unit with no
  // message in flight and none sendable, no register access in the shell and no frame part way
  // through the lanes' arbiter. The IP keeps its state internal, so the engine's and the core's
  // private flags are read by hierarchical reference.
  logic core_quiet, engine_quiet, shell_quiet;
  assign engine_quiet = u_engine.state == '0 && u_engine.kick_pend == '0 && !u_engine.rx_full && !u_engine.tx_active;
  assign core_quiet   = u_regs.irq_pending == '0 && !u_regs.cfg_irq_pending && !eng_reset_req && eng_qreset_req == '0
                        && u_regs.link_q == phy_link && !irq_req;
  assign shell_quiet  = msix_quiet && csr_quiet && vio_quiet && dec_quiet && lanes_quiet;
  assign idle         = engine_quiet && core_quiet && shell_quiet;
endmodule
