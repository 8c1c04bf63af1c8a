// ACME VNET: AXI4-Lite slave front end of BAR0 (prefix csr_ at the top).
//
// Turns each AXI4-Lite transaction into one request on the internal register port
// (rq_*: held until rq_done) and answers it with the data the register port returns.
// One transaction at a time; a complete write (AW and W both taken) and a read
// waiting at the same time are served alternately. Responses are always OKAY.
module acme_axil_slave #(
  parameter int AW = 14
) (
  input  logic          aclk,
  input  logic          aresetn,

  input  logic [AW-1:0] s_awaddr,
  input  logic          s_awvalid,
  output logic          s_awready,
  input  logic [31:0]   s_wdata,
  input  logic [3:0]    s_wstrb,
  input  logic          s_wvalid,
  output logic          s_wready,
  output logic [1:0]    s_bresp,
  output logic          s_bvalid,
  input  logic          s_bready,
  input  logic [AW-1:0] s_araddr,
  input  logic          s_arvalid,
  output logic          s_arready,
  output logic [31:0]   s_rdata,
  output logic [1:0]    s_rresp,
  output logic          s_rvalid,
  input  logic          s_rready,

  // internal register port
  output logic          rq_valid,
  output logic          rq_write,
  output logic [AW-1:0] rq_addr,
  output logic [31:0]   rq_wdata,
  output logic [3:0]    rq_wstrb,
  input  logic          rq_done,
  input  logic [31:0]   rq_rdata,

  output logic          quiet      // nothing taken and nothing to answer
);
  typedef enum logic [1:0] {LS_IDLE, LS_BUSY, LS_BRESP, LS_RRESP} ls_state_t;
  ls_state_t ls_state;

  logic          aw_held, w_held, favour_write;
  logic [AW-1:0] aw_addr_q, ar_addr_q;
  logic [31:0]   w_data_q;
  logic [3:0]    w_strb_q;
  logic          op_write;

  wire write_ready = aw_held && w_held;
  wire take_read   = ls_state == LS_IDLE && s_arvalid && !(write_ready && favour_write);
  wire take_write  = ls_state == LS_IDLE && write_ready && !take_read;

  assign s_awready = !aw_held;
  assign s_wready  = !w_held;
  assign s_arready = ls_state == LS_IDLE && !(write_ready && favour_write);
  assign s_bresp   = 2'b00;
  assign s_rresp   = 2'b00;
  assign s_bvalid  = ls_state == LS_BRESP;
  assign s_rvalid  = ls_state == LS_RRESP;

  assign rq_valid = ls_state == LS_BUSY;
  assign rq_write = op_write;
  assign rq_addr  = op_write ? aw_addr_q : ar_addr_q;
  assign rq_wdata = w_data_q;
  assign rq_wstrb = w_strb_q;

  assign quiet = ls_state == LS_IDLE && !aw_held && !w_held;

  always_ff @(posedge aclk or negedge aresetn) begin
    if (!aresetn) begin
      ls_state     <= LS_IDLE;
      aw_held      <= 1'b0;
      w_held       <= 1'b0;
      favour_write <= 1'b0;
      op_write     <= 1'b0;
      aw_addr_q    <= '0;
      ar_addr_q    <= '0;
      w_data_q     <= '0;
      w_strb_q     <= '0;
      s_rdata      <= '0;
    end else begin
      if (s_awvalid && s_awready) begin
        aw_held   <= 1'b1;
        aw_addr_q <= s_awaddr;
      end
      if (s_wvalid && s_wready) begin
        w_held   <= 1'b1;
        w_data_q <= s_wdata;
        w_strb_q <= s_wstrb;
      end
      unique case (ls_state)
        LS_IDLE: begin
          if (take_read) begin
            ar_addr_q    <= s_araddr;
            op_write     <= 1'b0;
            favour_write <= 1'b1;
            ls_state     <= LS_BUSY;
          end else if (take_write) begin
            op_write     <= 1'b1;
            favour_write <= 1'b0;
            ls_state     <= LS_BUSY;
          end
        end
        LS_BUSY: if (rq_done) begin
          if (op_write) begin
            ls_state <= LS_BRESP;
          end else begin
            s_rdata  <= rq_rdata;
            ls_state <= LS_RRESP;
          end
        end
        LS_BRESP: if (s_bready) begin
          aw_held  <= 1'b0;  // the write's AW and W are free again once B is taken
          w_held   <= 1'b0;
          ls_state <= LS_IDLE;
        end
        LS_RRESP: if (s_rready) ls_state <= LS_IDLE;
        default: ls_state <= LS_IDLE;
      endcase
    end
  end
endmodule
