// ACME VNET: BAR decoder. Serves one register request at a time from the BAR0 port and the BAR2
// port (alternating when both wait) and routes it:
//
//   BAR0 0x0000 vendor block   0x000 ID "ACME" (RO)      0x004 VERSION (RO)    0x008 SCRATCH (RW)
//                              0x100 + 4q  vq state of queue q     -> virtio core 0x3800 + 4q
//                              0x800..0x813 dirty page log block   -> virtio core 0x3F00..0x3F13
//   BAR0 0x2000 MSI-X table, 0x3000 PBA                            -> MSI-X unit (tb_*)
//   BAR2 0x0000 common configuration (0x40)                        -> virtio core 0x0000
//   BAR2 0x0400 ISR status (4)                                     -> virtio core 0x1000
//   BAR2 0x0600 device configuration (0xC)                         -> virtio core 0x2000
//   BAR2 0x1000 + 4q doorbells (writes)                            -> virtio core 0x3000 + 4q
//
// The virtio core (virtio_pci_regs) is reached through its AXI4-Lite slave (core_*), driven here as
// a master with one transaction outstanding. Every other offset reads 0 and ignores writes; in
// particular BAR2 never reaches the core's vendor blocks (0x3800, 0x3F00), which are BAR0's.
module acme_bar_decode #(
  parameter int NUM_QUEUES = 2
) (
  input  logic        aclk,
  input  logic        aresetn,

  // BAR0 requests (14-bit offsets)
  input  logic        b0_valid,
  input  logic        b0_write,
  input  logic [13:0] b0_addr,
  input  logic [31:0] b0_wdata,
  input  logic [3:0]  b0_wstrb,
  output logic        b0_done,
  // BAR2 requests (13-bit offsets)
  input  logic        b2_valid,
  input  logic        b2_write,
  input  logic [12:0] b2_addr,
  input  logic [31:0] b2_wdata,
  input  logic [3:0]  b2_wstrb,
  output logic        b2_done,
  // read data of the request done (with b0_done / b2_done)
  output logic [31:0] rsp_rdata,

  // AXI4-Lite master toward the virtio core
  output logic [13:0] core_awaddr,
  output logic        core_awvalid,
  input  logic        core_awready,
  output logic [31:0] core_wdata,
  output logic [3:0]  core_wstrb,
  output logic        core_wvalid,
  input  logic        core_wready,
  input  logic [1:0]  core_bresp,
  input  logic        core_bvalid,
  output logic        core_bready,
  output logic [13:0] core_araddr,
  output logic        core_arvalid,
  input  logic        core_arready,
  input  logic [31:0] core_rdata,
  input  logic [1:0]  core_rresp,
  input  logic        core_rvalid,
  output logic        core_rready,

  // MSI-X table / PBA window (offset inside BAR0 0x2000..0x3FFF: bit 12 selects the PBA)
  output logic        tb_write,
  output logic [12:0] tb_addr,
  output logic [31:0] tb_wdata,
  output logic [3:0]  tb_wstrb,
  input  logic [31:0] tb_rdata,

  output logic        quiet       // no request in service
);
  localparam logic [31:0] ACME_ID      = 32'h454D_4341;  // "ACME" read as little-endian bytes
  localparam logic [31:0] ACME_VERSION = 32'h0001_0000;
  // vendor block
  localparam logic [13:0] VQS_BASE   = 14'h0100, VQS_END = 14'h0800;
  localparam logic [13:0] LOG_BASE   = 14'h0800, LOG_END = 14'h0814;
  // the virtio core's blocks
  localparam logic [13:0] CORE_COMMON = 14'h0000, CORE_ISR = 14'h1000, CORE_DEVICE = 14'h2000,
                          CORE_NOTIFY = 14'h3000, CORE_VQS = 14'h3800, CORE_LOG = 14'h3F00;
  // BAR2 layout
  localparam logic [12:0] V_COMMON = 13'h0000, V_COMMON_LEN = 13'h0040;
  localparam logic [12:0] V_ISR    = 13'h0400, V_ISR_LEN    = 13'h0004;
  localparam logic [12:0] V_DEVICE = 13'h0600, V_DEVICE_LEN = 13'h000C;
  localparam logic [12:0] V_NOTIFY = 13'h1000;

  typedef enum logic [1:0] {TG_NONE, TG_VENDOR, TG_MSIX, TG_CORE} target_t;
  typedef enum logic [2:0] {DS_IDLE, DS_LOCAL, DS_CORE_W, DS_CORE_B, DS_CORE_AR, DS_CORE_R, DS_DONE} dstate_t;

  dstate_t     dstate;
  logic        from_b2, last_b2;
  logic        op_write;
  target_t     op_target;
  logic [13:0] op_addr;        // the BAR offset (local targets) or the core's address
  logic [31:0] op_wdata;
  logic [3:0]  op_wstrb;
  logic        aw_sent, w_sent;
  logic [31:0] scratch;

  // ---- routing of the request about to be taken ------------------------------------------------
  logic        pick_b2;
  logic        nx_write;
  logic [13:0] nx_bar_addr;
  target_t     nx_target;
  logic [13:0] nx_addr;

  assign pick_b2 = b2_valid && (!b0_valid || !last_b2);

  always_comb begin
    nx_target   = TG_NONE;
    nx_write    = pick_b2 ? b2_write : b0_write;
    nx_bar_addr = pick_b2 ? {1'b0, b2_addr} : b0_addr;
    nx_addr     = nx_bar_addr;
    if (!pick_b2) begin
      // BAR0
      if (b0_addr < 14'h1000) begin
        if (b0_addr >= VQS_BASE && b0_addr < VQS_END) begin
          if ((32'(b0_addr) - 32'(VQS_BASE)) >> 2 < NUM_QUEUES) begin
            nx_target = TG_CORE;
            nx_addr   = CORE_VQS + (b0_addr - VQS_BASE);
          end
        end else if (b0_addr >= LOG_BASE && b0_addr < LOG_END) begin
          nx_target = TG_CORE;
          nx_addr   = CORE_LOG + (b0_addr - LOG_BASE);
        end else begin
          nx_target = TG_VENDOR;
        end
      end else if (b0_addr >= 14'h2000) begin
        nx_target = TG_MSIX;
      end
    end else begin
      // BAR2
      if (b2_addr < V_COMMON + V_COMMON_LEN) begin
        nx_target = TG_CORE;
        nx_addr   = CORE_COMMON + {1'b0, b2_addr - V_COMMON};
      end else if (b2_addr >= V_ISR && b2_addr < V_ISR + V_ISR_LEN) begin
        nx_target = TG_CORE;
        nx_addr   = CORE_ISR + {1'b0, b2_addr - V_ISR};
      end else if (b2_addr >= V_DEVICE && b2_addr < V_DEVICE + V_DEVICE_LEN) begin
        nx_target = TG_CORE;
        nx_addr   = CORE_DEVICE + {1'b0, b2_addr - V_DEVICE};
      end else if (b2_addr >= V_NOTIFY && b2_write && (32'(b2_addr) - 32'(V_NOTIFY)) >> 2 < NUM_QUEUES) begin
        // The core takes the queue from the value written, so only the doorbell's offset inside its first
        // 0x800 bytes is kept (queues from 512 on share lower doorbells there; the core's notify window is
        // 4 * (num_queues - 1) + 2 bytes). Reads of a doorbell give 0 without a core access.
        nx_target = TG_CORE;
        nx_addr   = CORE_NOTIFY + {3'b000, b2_addr[10:0]};
      end
    end
  end

  // ---- vendor block read data ----------------------------------------------------------------
  logic [31:0] vendor_rdata;
  always_comb begin
    unique case (op_addr[11:2])
      10'h000: vendor_rdata = ACME_ID;
      10'h001: vendor_rdata = ACME_VERSION;
      10'h002: vendor_rdata = scratch;
      default: vendor_rdata = 32'h0;
    endcase
  end

  // ---- outputs -------------------------------------------------------------------------------
  assign b0_done = dstate == DS_DONE && !from_b2;
  assign b2_done = dstate == DS_DONE && from_b2;

  assign core_awaddr  = op_addr;
  assign core_araddr  = op_addr;
  assign core_wdata   = op_wdata;
  assign core_wstrb   = op_wstrb;
  assign core_awvalid = dstate == DS_CORE_W && !aw_sent;
  assign core_wvalid  = dstate == DS_CORE_W && !w_sent;
  assign core_bready  = dstate == DS_CORE_B;
  assign core_arvalid = dstate == DS_CORE_AR;
  assign core_rready  = dstate == DS_CORE_R;

  assign tb_addr  = op_addr[12:0];
  assign tb_wdata = op_wdata;
  assign tb_wstrb = op_wstrb;
  assign tb_write = dstate == DS_LOCAL && op_write && op_target == TG_MSIX;

  assign quiet = dstate == DS_IDLE;

  always_ff @(posedge aclk or negedge aresetn) begin
    if (!aresetn) begin
      dstate    <= DS_IDLE;
      from_b2   <= 1'b0;
      last_b2   <= 1'b0;
      op_write  <= 1'b0;
      op_target <= TG_NONE;
      op_addr   <= '0;
      op_wdata  <= '0;
      op_wstrb  <= '0;
      aw_sent   <= 1'b0;
      w_sent    <= 1'b0;
      scratch   <= '0;
      rsp_rdata <= '0;
    end else begin
      unique case (dstate)
        DS_IDLE: if (b0_valid || b2_valid) begin
          from_b2   <= pick_b2;
          last_b2   <= pick_b2;
          op_write  <= nx_write;
          op_target <= nx_target;
          op_addr   <= nx_addr;
          op_wdata  <= pick_b2 ? b2_wdata : b0_wdata;
          op_wstrb  <= pick_b2 ? b2_wstrb : b0_wstrb;
          aw_sent   <= 1'b0;
          w_sent    <= 1'b0;
          rsp_rdata <= '0;
          dstate    <= nx_target != TG_CORE ? DS_LOCAL : nx_write ? DS_CORE_W : DS_CORE_AR;
        end
        DS_LOCAL: begin
          if (op_write) begin
            if (op_target == TG_VENDOR && op_addr[11:2] == 10'h002) begin
              for (int b = 0; b < 4; b++) if (op_wstrb[b]) scratch[8*b +: 8] <= op_wdata[8*b +: 8];
            end
          end else begin
            unique case (op_target)
              TG_VENDOR: rsp_rdata <= vendor_rdata;
              TG_MSIX:   rsp_rdata <= tb_rdata;
              default:   rsp_rdata <= 32'h0;
            endcase
          end
          dstate <= DS_DONE;
        end
        DS_CORE_W: begin
          if (core_awready) aw_sent <= 1'b1;
          if (core_wready)  w_sent  <= 1'b1;
          if ((aw_sent || core_awready) && (w_sent || core_wready)) dstate <= DS_CORE_B;
        end
        DS_CORE_B:  if (core_bvalid) dstate <= DS_DONE;
        DS_CORE_AR: if (core_arready) dstate <= DS_CORE_R;
        DS_CORE_R: if (core_rvalid) begin
          rsp_rdata <= core_rdata;
          dstate    <= DS_DONE;
        end
        DS_DONE: dstate <= DS_IDLE;
        default: dstate <= DS_IDLE;
      endcase
    end
  end

  // The core answers OKAY always.
  logic unused_core;
  assign unused_core = ^{core_bresp, core_rresp};
endmodule
