// ACME VNET: full AXI4 slave front end of BAR2 (prefix vio_ at the top), 32-bit data.
//
// Registers are reached by single-beat accesses only (AxLEN 0, AxSIZE <= 2: 8, 16 or 32 bits
// with byte strobes), each turned into one request on the internal register port (rq_*, held
// until rq_done). Anything else is completed without touching a register: a write burst has all
// of its AxLEN + 1 beats taken and gets one B with SLVERR; a read burst gets AxLEN + 1 beats of
// zero data with SLVERR, RLAST on the last one. IDs are echoed. One transaction at a time; a
// waiting write and a waiting read are taken alternately.
module acme_axi4_slave #(
  parameter int AW   = 13,
  parameter int IDW  = 4
) (
  input  logic           aclk,
  input  logic           aresetn,

  input  logic [IDW-1:0] s_awid,
  input  logic [AW-1:0]  s_awaddr,
  input  logic [7:0]     s_awlen,
  input  logic [2:0]     s_awsize,
  input  logic [1:0]     s_awburst,
  input  logic           s_awvalid,
  output logic           s_awready,
  input  logic [31:0]    s_wdata,
  input  logic [3:0]     s_wstrb,
  input  logic           s_wlast,
  input  logic           s_wvalid,
  output logic           s_wready,
  output logic [IDW-1:0] s_bid,
  output logic [1:0]     s_bresp,
  output logic           s_bvalid,
  input  logic           s_bready,
  input  logic [IDW-1:0] s_arid,
  input  logic [AW-1:0]  s_araddr,
  input  logic [7:0]     s_arlen,
  input  logic [2:0]     s_arsize,
  input  logic [1:0]     s_arburst,
  input  logic           s_arvalid,
  output logic           s_arready,
  output logic [IDW-1:0] s_rid,
  output logic [31:0]    s_rdata,
  output logic [1:0]     s_rresp,
  output logic           s_rlast,
  output logic           s_rvalid,
  input  logic           s_rready,

  // internal register port
  output logic           rq_valid,
  output logic           rq_write,
  output logic [AW-1:0]  rq_addr,
  output logic [31:0]    rq_wdata,
  output logic [3:0]     rq_wstrb,
  input  logic           rq_done,
  input  logic [31:0]    rq_rdata,

  output logic           quiet      // no transaction in progress
);
  localparam logic [1:0] RESP_OKAY = 2'b00, RESP_SLVERR = 2'b10;

  typedef enum logic [2:0] {XS_IDLE, XS_WDATA, XS_WREQ, XS_BRESP, XS_RREQ, XS_RDATA} xs_state_t;
  xs_state_t xs_state;

  logic           favour_write;
  logic [AW-1:0]  addr_q;
  logic [7:0]     beats_left;   // W beats still to take / R beats still to give after this one
  logic           single;       // the transaction is a register access
  logic [31:0]    wdata_q;
  logic [3:0]     wstrb_q;

  // a register access: one beat no wider than the bus (the burst type does not matter for one beat)
  function automatic logic one_word(input logic [7:0] len, input logic [2:0] size);
    return len == 8'd0 && size <= 3'd2;
  endfunction

  wire take_ar = xs_state == XS_IDLE && s_arvalid && !(s_awvalid && favour_write);
  wire take_aw = xs_state == XS_IDLE && s_awvalid && !take_ar;

  assign s_arready = xs_state == XS_IDLE && !(s_awvalid && favour_write);
  assign s_awready = xs_state == XS_IDLE && !take_ar;
  assign s_wready  = xs_state == XS_WDATA;
  assign s_bvalid  = xs_state == XS_BRESP;
  assign s_rvalid  = xs_state == XS_RDATA;
  assign s_rlast   = beats_left == 8'd0;
  assign s_bresp   = single ? RESP_OKAY : RESP_SLVERR;
  assign s_rresp   = single ? RESP_OKAY : RESP_SLVERR;

  assign rq_valid = xs_state == XS_WREQ || xs_state == XS_RREQ;
  assign rq_write = xs_state == XS_WREQ;
  assign rq_addr  = addr_q;
  assign rq_wdata = wdata_q;
  assign rq_wstrb = wstrb_q;

  assign quiet = xs_state == XS_IDLE;

  always_ff @(posedge aclk or negedge aresetn) begin
    if (!aresetn) begin
      xs_state     <= XS_IDLE;
      favour_write <= 1'b0;
      addr_q       <= '0;
      beats_left   <= '0;
      single       <= 1'b0;
      wdata_q      <= '0;
      wstrb_q      <= '0;
      s_bid        <= '0;
      s_rid        <= '0;
      s_rdata      <= '0;
    end else begin
      unique case (xs_state)
        XS_IDLE: begin
          if (take_ar) begin
            s_rid        <= s_arid;
            addr_q       <= s_araddr;
            beats_left   <= s_arlen;
            single       <= one_word(s_arlen, s_arsize);
            s_rdata      <= '0;
            favour_write <= 1'b1;
            xs_state     <= one_word(s_arlen, s_arsize) ? XS_RREQ : XS_RDATA;
          end else if (take_aw) begin
            s_bid        <= s_awid;
            addr_q       <= s_awaddr;
            beats_left   <= s_awlen;
            single       <= one_word(s_awlen, s_awsize);
            favour_write <= 1'b0;
            xs_state     <= XS_WDATA;
          end
        end
        XS_WDATA: if (s_wvalid) begin
          // beats are counted from AWLEN; WLAST is not needed to find the end
          wdata_q    <= s_wdata;
          wstrb_q    <= s_wstrb;
          beats_left <= beats_left - 8'd1;
          if (beats_left == 8'd0) xs_state <= single ? XS_WREQ : XS_BRESP;
        end
        XS_WREQ: if (rq_done) xs_state <= XS_BRESP;
        XS_BRESP: if (s_bready) xs_state <= XS_IDLE;
        XS_RREQ: if (rq_done) begin
          s_rdata  <= rq_rdata;
          xs_state <= XS_RDATA;
        end
        XS_RDATA: if (s_rready) begin
          if (beats_left == 8'd0) xs_state <= XS_IDLE;
          else beats_left <= beats_left - 8'd1;
        end
        default: xs_state <= XS_IDLE;
      endcase
    end
  end

  // The burst type changes nothing for one beat; WLAST is implied by AWLEN.
  logic unused_axi4;
  assign unused_axi4 = ^{s_awburst, s_arburst, s_wlast};
endmodule
