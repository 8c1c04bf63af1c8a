// Receive input of the virtio-net function: one frame from the s_axis port buffered at a time.
//
// Beats go into the receive buffer (vnet_buf) from position 12, behind the virtio_net_hdr the
// ring engine adds. At tlast the frame either waits for the engine (full, with its length and
// the queue pair tdest asked for) until the engine says it is done with it (consume: delivered
// or dropped), or is dropped here (in_drop): empty, longer than the buffer, link down, or with
// VIRTIO_NET_F_MTU longer than mtu plus the Ethernet header and an 802.1Q tag (NET-DEV-05).
// While a frame waits, tready is low.
module vnet_rx_in #(
  parameter logic [31:0] W         = 8,     // bytes per beat
  parameter logic [31:0] PW        = 11,    // buffer position width
  parameter logic [31:0] PAIR_W    = 1,
  parameter logic [31:0] BUF_BYTES = 2048,
  parameter logic [31:0] HDR_LEN   = 12,
  parameter logic [15:0] MTU       = 16'd1500,
  localparam logic [31:0] LW       = $clog2(W),
  localparam logic [31:0] DATA_W   = 8 * W
) (
  input  logic              clk,
  input  logic              rst_n,
  `VNET_AXIS_PORTS(s_axis, input, output),
  input  logic              link_up,
  input  logic              mtu_limit,    // VIRTIO_NET_F_MTU negotiated
  input  logic              consume,      // the waiting frame is done with
  output logic              full,         // a frame waits for the engine
  output logic [PW:0]       len,          // its length (without header)
  output logic [PAIR_W-1:0] pair,         // its tdest
  output logic              in_drop,      // a frame was dropped here
  output logic              buf_wr_en,
  output logic [PW-1:0]     buf_wr_base,
  output logic [W-1:0]      buf_wr_mask
);
  localparam logic [PW:0]  BUF = (PW+1)'(BUF_BYTES);
  localparam logic [PW:0]  HDR = (PW+1)'(HDR_LEN);
  localparam logic [15:0]  ETH_P_8021Q = 16'h8100;

  logic [PW:0]   pos;       // bytes of the frame being received
  logic          over;      // longer than the buffer: dropped at tlast
  logic [15:0]   etype;
  logic [LW:0]   nbytes;
  logic [PW+1:0] frame_end;
  logic [PW:0]   limit;

  always_comb begin
    nbytes = '0;
    for (int unsigned k = 0; k < W; k++) nbytes = nbytes + (LW+1)'(s_axis_tkeep[k]);
  end
  assign s_axis_tready = !full;
  assign frame_end     = (PW+2)'(pos) + (PW+2)'(nbytes);
  assign buf_wr_en     = s_axis_tvalid && s_axis_tready && !over && frame_end <= (PW+2)'(BUF - HDR);
  assign buf_wr_base   = PW'(pos + HDR);
  assign buf_wr_mask   = s_axis_tkeep;
  // NET-DEV-05 with VIRTIO_NET_F_MTU: at most mtu plus the Ethernet header (and an 802.1Q tag)
  assign limit         = (PW+1)'(32'(MTU) + 32'd14 + ((etype == ETH_P_8021Q) ? 32'd4 : 32'd0));

  always_ff @(posedge clk or negedge rst_n) begin
    if (!rst_n) begin
      full <= 1'b0; len <= '0; pos <= '0; over <= 1'b0; etype <= '0; in_drop <= 1'b0; pair <= '0;
    end else begin
      in_drop <= 1'b0;
      if (consume) full <= 1'b0;
      if (s_axis_tvalid && s_axis_tready) begin
        for (int unsigned k = 0; k < W; k++) begin
          if (s_axis_tkeep[k] && (PW+2)'(pos) + (PW+2)'(k) == (PW+2)'(12)) etype[15:8] <= s_axis_tdata[8*k +: 8];
          if (s_axis_tkeep[k] && (PW+2)'(pos) + (PW+2)'(k) == (PW+2)'(13)) etype[7:0]  <= s_axis_tdata[8*k +: 8];
        end
        if (s_axis_tlast) begin
          pos   <= '0;
          over  <= 1'b0;
          etype <= '0;
          if (over || frame_end > (PW+2)'(BUF - HDR) || frame_end == '0 || !link_up
              || (mtu_limit && frame_end > (PW+2)'(limit))) begin
            in_drop <= 1'b1;
          end else begin
            full <= 1'b1;
            len  <= (PW+1)'(frame_end);
            pair <= s_axis_tdest;
          end
        end else if (!over) begin
          if (frame_end > (PW+2)'(BUF - HDR)) over <= 1'b1;  // keep taking beats, drop at tlast
          else pos <= (PW+1)'(frame_end);
        end
      end
    end
  end
endmodule
