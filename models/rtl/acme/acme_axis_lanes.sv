// ACME VNET: the frame ports of the shell, one AXI4-Stream lane per queue pair (prefix rx_axis_ /
// tx_axis_ at the top), in front of the licensed IP's single frame port whose tdest is the queue pair.
//
// Every lane signal is packed: lane i of tdata at [i*W +: W], of tkeep at [i*W/8 +: W/8], of
// tvalid / tready / tlast at bit i.
//
// Receive: the lanes are granted the IP's port a whole frame at a time (no beats of two frames
// interleave), oldest request first: a lane that starts offering a frame joins the back of a queue of
// lane numbers, the lane at its front is granted until the beat with tlast is accepted, and a lane with
// another frame joins the back again. So no lane waits for more than one frame of each other lane, and
// frames that start on their lanes in wire order reach the IP in wire order (lanes starting in the same
// cycle join lowest number first, one a cycle).
//
// Transmit: the IP's frame goes out on the lane its tdest names (tready from that lane); a tdest with
// no lane is taken and dropped rather than stalling the IP.
module acme_axis_lanes #(
  parameter int NUM_PAIRS = 1,
  parameter int W         = 128,
  localparam int KW       = W / 8,
  localparam int PAIR_W   = NUM_PAIRS > 1 ? $clog2(NUM_PAIRS) : 1
) (
  input  logic                    aclk,
  input  logic                    aresetn,

  // receive lanes (from the wire)
  input  logic [NUM_PAIRS*W-1:0]  rx_lane_tdata,
  input  logic [NUM_PAIRS*KW-1:0] rx_lane_tkeep,
  input  logic [NUM_PAIRS-1:0]    rx_lane_tlast,
  input  logic [NUM_PAIRS-1:0]    rx_lane_tvalid,
  output logic [NUM_PAIRS-1:0]    rx_lane_tready,
  // to the IP's receive port
  output logic [W-1:0]            rx_ip_tdata,
  output logic [KW-1:0]           rx_ip_tkeep,
  output logic                    rx_ip_tlast,
  output logic                    rx_ip_tvalid,
  input  logic                    rx_ip_tready,
  output logic [PAIR_W-1:0]       rx_ip_tdest,

  // from the IP's transmit port
  input  logic [W-1:0]            tx_ip_tdata,
  input  logic [KW-1:0]           tx_ip_tkeep,
  input  logic                    tx_ip_tlast,
  input  logic                    tx_ip_tvalid,
  output logic                    tx_ip_tready,
  input  logic [PAIR_W-1:0]       tx_ip_tdest,
  // transmit lanes (to the wire)
  output logic [NUM_PAIRS*W-1:0]  tx_lane_tdata,
  output logic [NUM_PAIRS*KW-1:0] tx_lane_tkeep,
  output logic [NUM_PAIRS-1:0]    tx_lane_tlast,
  output logic [NUM_PAIRS-1:0]    tx_lane_tvalid,
  input  logic [NUM_PAIRS-1:0]    tx_lane_tready,

  output logic                    quiet        // no lane waiting or granted
);
  // ---- receive: oldest request first, a whole frame at a time --------------------------------
  localparam int CW = $clog2(NUM_PAIRS + 1);
  logic [PAIR_W-1:0]  order [NUM_PAIRS];  // lanes waiting, in the order they asked
  logic [PAIR_W-1:0]  rd_ptr, wr_ptr;
  logic [CW-1:0]      count;
  logic [NUM_PAIRS-1:0] waiting;          // in the queue (or granted)
  logic               ask_any;
  logic [PAIR_W-1:0]  ask_lane;          // the lowest lane offering a frame and not yet waiting
  logic [PAIR_W-1:0]  grant;
  logic               done;               // the granted lane's last beat is accepted

  always_comb begin
    ask_any  = 1'b0;
    ask_lane = '0;
    for (int l = NUM_PAIRS - 1; l >= 0; l--) begin
      if (rx_lane_tvalid[l] && !waiting[l]) begin
        ask_any  = 1'b1;
        ask_lane = PAIR_W'(l);
      end
    end
  end

  assign grant        = order[rd_ptr];
  assign rx_ip_tvalid = count != '0 && rx_lane_tvalid[grant];
  assign rx_ip_tdata  = rx_lane_tdata[int'(grant) * W +: W];
  assign rx_ip_tkeep  = rx_lane_tkeep[int'(grant) * KW +: KW];
  assign rx_ip_tlast  = rx_lane_tlast[grant];
  assign rx_ip_tdest  = grant;
  assign done         = rx_ip_tvalid && rx_ip_tready && rx_ip_tlast;

  always_comb begin
    rx_lane_tready = '0;
    rx_lane_tready[grant] = rx_ip_tready && rx_ip_tvalid;
  end

  always_ff @(posedge aclk or negedge aresetn) begin
    if (!aresetn) begin
      rd_ptr  <= '0;
      wr_ptr  <= '0;
      count   <= '0;
      waiting <= '0;
      for (int i = 0; i < NUM_PAIRS; i++) order[i] <= '0;
    end else begin
      if (ask_any) begin
        order[wr_ptr]      <= ask_lane;
        wr_ptr             <= int'(wr_ptr) == NUM_PAIRS - 1 ? '0 : wr_ptr + 1'b1;
        waiting[ask_lane] <= 1'b1;
      end
      if (done) begin
        rd_ptr         <= int'(rd_ptr) == NUM_PAIRS - 1 ? '0 : rd_ptr + 1'b1;
        waiting[grant] <= 1'b0;  // the lane's next frame, if any, asks again from the next cycle
      end
      count <= count + CW'(ask_any) - CW'(done);
    end
  end

  // ---- transmit: the IP's tdest picks the lane ----------------------------------------------
  logic tx_has_lane;
  assign tx_has_lane   = int'(tx_ip_tdest) < NUM_PAIRS;
  assign tx_lane_tdata = {NUM_PAIRS{tx_ip_tdata}};
  assign tx_lane_tkeep = {NUM_PAIRS{tx_ip_tkeep}};
  assign tx_lane_tlast = {NUM_PAIRS{tx_ip_tlast}};
  always_comb begin
    tx_lane_tvalid = '0;
    if (tx_has_lane) tx_lane_tvalid[tx_ip_tdest] = tx_ip_tvalid;
  end
  assign tx_ip_tready = tx_has_lane ? tx_lane_tready[tx_ip_tdest] : 1'b1;

  assign quiet = count == '0;
endmodule
