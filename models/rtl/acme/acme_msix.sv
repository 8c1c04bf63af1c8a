// ACME VNET: MSI-X unit. Holds the MSI-X table and the PBA (BAR0 0x2000 / 0x3000) and turns the
// virtio core's interrupt requests (vector numbers, valid/ready) into MSI-X message writes on an
// AXI4 master of its own (32-bit data, 64-bit address).
//
//   request for vector v:  MSI-X disabled, or v >= VECTORS       -> dropped
//                          function mask or v's mask bit set     -> PBA bit v set
//                          otherwise                             -> message (when the master is free)
//   PBA bit v set while v is unmasked, the function is unmasked and MSI-X is enabled
//                                                                 -> PBA bit cleared, message
//   message: one beat, AWLEN 0, AWSIZE 2, WSTRB 1111, the entry's data to the entry's address (bits 1:0
//   are 0: a DWORD address), then the B response before the next one (its RESP is not looked at).
//
// Table entry (16 bytes): +0 message address [31:0] (bits 1:0 read 0), +4 message address [63:32],
// +8 message data, +12 vector control (bit 0 mask, set after reset). PBA: bit v of the 64-bit word
// v / 64, read only. Both are accessed as 32-bit words with byte strobes; offsets past the table or
// the PBA read 0.
module acme_msix #(
  parameter int VECTORS = 3   // table size, 1..256
) (
  input  logic        aclk,
  input  logic        aresetn,

  // MSI-X capability state from configuration space
  input  logic        msix_en,
  input  logic        msix_fmask,
  input  logic        bus_master,   // a message is a memory write: held pending while bus mastering is off

  // interrupt requests from the virtio core
  input  logic        irq_valid,
  input  logic [15:0] irq_vector,
  output logic        irq_ready,

  // table / PBA window: tb_addr is the offset from BAR0 0x2000, bit 12 set for the PBA
  input  logic        tb_write,
  input  logic [12:0] tb_addr,
  input  logic [31:0] tb_wdata,
  input  logic [3:0]  tb_wstrb,
  output logic [31:0] tb_rdata,

  // AXI4 master for the message writes
  output logic [1:0]  m_awid,
  output logic [63:0] m_awaddr,
  output logic [7:0]  m_awlen,
  output logic [2:0]  m_awsize,
  output logic [1:0]  m_awburst,
  output logic        m_awlock,
  output logic [3:0]  m_awcache,
  output logic [2:0]  m_awprot,
  output logic        m_awvalid,
  input  logic        m_awready,
  output logic [31:0] m_wdata,
  output logic [3:0]  m_wstrb,
  output logic        m_wlast,
  output logic        m_wvalid,
  input  logic        m_wready,
  input  logic [1:0]  m_bid,
  input  logic [1:0]  m_bresp,
  input  logic        m_bvalid,
  output logic        m_bready,
  output logic [1:0]  m_arid,
  output logic [63:0] m_araddr,
  output logic [7:0]  m_arlen,
  output logic [2:0]  m_arsize,
  output logic [1:0]  m_arburst,
  output logic        m_arlock,
  output logic [3:0]  m_arcache,
  output logic [2:0]  m_arprot,
  output logic        m_arvalid,
  input  logic        m_arready,
  input  logic [1:0]  m_rid,
  input  logic [31:0] m_rdata,
  input  logic [1:0]  m_rresp,
  input  logic        m_rlast,
  input  logic        m_rvalid,
  output logic        m_rready,

  output logic        quiet       // no message in flight and none waiting to be sent
);
  localparam int VW       = VECTORS > 1 ? $clog2(VECTORS) : 1;
  localparam int PBA_BITS = ((VECTORS + 63) / 64) * 64;

  // ---- table and pending bits ----------------------------------------------------------------
  logic [VECTORS-1:0][61:0] vec_addr;    // message address bits 63:2
  logic [VECTORS-1:0][31:0] vec_data;
  logic [VECTORS-1:0]       vec_mask;
  logic [VECTORS-1:0]       pending;

  // ---- message sender ------------------------------------------------------------------------
  typedef enum logic [1:0] {MS_IDLE, MS_SEND, MS_RESP} ms_state_t;
  ms_state_t   ms_state;
  logic        aw_done, w_done;
  logic [61:0] msg_addr;
  logic [31:0] msg_data;

  // the request on irq_valid
  logic          req_in_range, req_masked;
  logic [VW-1:0] req_vec;
  assign req_in_range = 32'(irq_vector) < VECTORS;
  assign req_vec      = VW'(irq_vector);
`ifdef ACME_BUG_ENTRY_MASK_IGNORED
  // seeded bug (tests/test_rtl_designs.py): a masked entry's message is sent anyway
  assign req_masked   = msix_fmask || !bus_master;
`else
  assign req_masked   = msix_fmask || vec_mask[req_vec] || !bus_master;
`endif

  // the lowest pending vector that may be sent now
  logic [VECTORS-1:0] sendable;
  logic               drain_any;
  logic [VW-1:0]      drain_vec;
  assign sendable  = pending & ~vec_mask;
  assign drain_any = msix_en && !msix_fmask && bus_master && sendable != '0;
  always_comb begin
    drain_vec = '0;
    for (int v = VECTORS - 1; v >= 0; v--) if (sendable[v]) drain_vec = VW'(v);
  end

  // pending messages go first; a new unmasked request waits until the sender is free
  logic start_drain, start_req, drop_req, park_req;
  assign start_drain = ms_state == MS_IDLE && drain_any;
  assign drop_req    = irq_valid && (!msix_en || !req_in_range);
  assign park_req    = irq_valid && !drop_req && req_masked;
  assign start_req   = irq_valid && !drop_req && !req_masked && ms_state == MS_IDLE && !drain_any;
  assign irq_ready   = drop_req || park_req || start_req;

  assign quiet = ms_state == MS_IDLE && !drain_any;

  // ---- table / PBA reads ---------------------------------------------------------------------
  logic [7:0]  rd_entry;
  logic [VW-1:0] rd_vec;
  logic [61:0] rd_addr_sel;
  logic [31:0] rd_data_sel;
  logic [PBA_BITS-1:0] pba_word;
  logic [9:0]  rd_dword;
  assign rd_entry    = tb_addr[11:4];
  assign rd_vec      = VW'(rd_entry);
  assign rd_addr_sel = vec_addr[rd_vec];
  assign rd_data_sel = vec_data[rd_vec];
  assign pba_word    = PBA_BITS'(pending);
  assign rd_dword    = tb_addr[11:2];

  always_comb begin
    tb_rdata = 32'h0;
    if (tb_addr[12]) begin
      if (32'(rd_dword) < PBA_BITS / 32) tb_rdata = pba_word[32 * rd_dword +: 32];
    end else if (32'(rd_entry) < VECTORS) begin
      unique case (tb_addr[3:2])
        2'd0: tb_rdata = {rd_addr_sel[29:0], 2'b00};
        2'd1: tb_rdata = rd_addr_sel[61:30];
        2'd2: tb_rdata = rd_data_sel;
        2'd3: tb_rdata = {31'h0, vec_mask[rd_vec]};
        default: tb_rdata = 32'h0;
      endcase
    end
  end

  function automatic logic [31:0] with_bytes(input logic [31:0] old, input logic [31:0] nw, input logic [3:0] be);
    logic [31:0] r;
    for (int b = 0; b < 4; b++) r[8*b +: 8] = be[b] ? nw[8*b +: 8] : old[8*b +: 8];
    return r;
  endfunction

  logic        tb_table_write;
  logic [31:0] new_lo, new_hi, new_data;
  assign tb_table_write = tb_write && !tb_addr[12] && 32'(rd_entry) < VECTORS;
  assign new_lo         = with_bytes({rd_addr_sel[29:0], 2'b00}, tb_wdata, tb_wstrb);
  assign new_hi         = with_bytes(rd_addr_sel[61:30], tb_wdata, tb_wstrb);
  assign new_data       = with_bytes(rd_data_sel, tb_wdata, tb_wstrb);

  always_ff @(posedge aclk or negedge aresetn) begin
    if (!aresetn) begin
      for (int v = 0; v < VECTORS; v++) begin  // (per entry: a whole-array '0 can exceed lint's replication limit)
        vec_addr[v] <= '0;
        vec_data[v] <= '0;
      end
      vec_mask <= '1;  // every vector masked after reset
      pending  <= '0;
      ms_state <= MS_IDLE;
      aw_done  <= 1'b0;
      w_done   <= 1'b0;
      msg_addr <= '0;
      msg_data <= '0;
    end else begin
      // table writes (the PBA is read only)
      if (tb_table_write) begin
        unique case (tb_addr[3:2])
          2'd0: vec_addr[rd_vec] <= {rd_addr_sel[61:30], new_lo[31:2]};
          2'd1: vec_addr[rd_vec] <= {new_hi, rd_addr_sel[29:0]};
          2'd2: vec_data[rd_vec] <= new_data;
          2'd3: if (tb_wstrb[0]) vec_mask[rd_vec] <= tb_wdata[0];
          default: ;
        endcase
      end

      // pending bits: a masked request sets its bit, a message sent from the PBA clears it
      if (park_req) pending[req_vec] <= 1'b1;
      if (start_drain) pending[drain_vec] <= 1'b0;

      unique case (ms_state)
        MS_IDLE: begin
          if (start_drain) begin
            msg_addr <= vec_addr[drain_vec];
            msg_data <= vec_data[drain_vec];
          end else if (start_req) begin
            msg_addr <= vec_addr[req_vec];
            msg_data <= vec_data[req_vec];
          end
          if (start_drain || start_req) begin
            aw_done  <= 1'b0;
            w_done   <= 1'b0;
            ms_state <= MS_SEND;
          end
        end
        MS_SEND: begin
          if (m_awready) aw_done <= 1'b1;
          if (m_wready)  w_done  <= 1'b1;
          if ((aw_done || m_awready) && (w_done || m_wready)) ms_state <= MS_RESP;
        end
        MS_RESP: if (m_bvalid) ms_state <= MS_IDLE;
        default: ms_state <= MS_IDLE;
      endcase
    end
  end

  // ---- AXI4 master ---------------------------------------------------------------------------
  assign m_awid    = 2'd0;
  assign m_awaddr  = {msg_addr, 2'b00};
  assign m_awlen   = 8'd0;
  assign m_awsize  = 3'd2;      // 4 bytes
  assign m_awburst = 2'b01;     // INCR
  assign m_awlock  = 1'b0;
  assign m_awcache = 4'b0000;   // device, non-bufferable: the message must reach the interrupt controller
  assign m_awprot  = 3'b000;
  assign m_awvalid = ms_state == MS_SEND && !aw_done;
  assign m_wdata   = msg_data;
  assign m_wstrb   = 4'hF;
  assign m_wlast   = 1'b1;
  assign m_wvalid  = ms_state == MS_SEND && !w_done;
  assign m_bready  = ms_state == MS_RESP;
  // no reads
  assign m_arid    = 2'd0;
  assign m_araddr  = 64'h0;
  assign m_arlen   = 8'd0;
  assign m_arsize  = 3'd2;
  assign m_arburst = 2'b01;
  assign m_arlock  = 1'b0;
  assign m_arcache = 4'b0000;
  assign m_arprot  = 3'b000;
  assign m_arvalid = 1'b0;
  assign m_rready  = 1'b1;

  // The message's B response is waited for, not judged; the read channel is never used.
  logic unused_resp;
  assign unused_resp = ^{m_bid, m_bresp, m_arready, m_rid, m_rdata, m_rresp, m_rlast, m_rvalid, tb_addr[1:0], new_lo[1:0]};
endmodule
