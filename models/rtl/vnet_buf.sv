// Frame buffer of BYTES bytes with byte-granular, unaligned beat access.
//
// Stored as W byte-wide banks (byte p lives in bank p % W, row p / W) so one beat of W
// bytes starting at any byte position is one access per bank plus a lane rotation. Both
// ports address "lane 0 sits at byte position base": lane k maps to position base + k
// (mod BYTES). That is the shape of an AXI beat whose first useful lane is not lane 0,
// so unaligned guest buffers need no separate realignment stage.
//
// The read port is combinational (distributed RAM), so a beat can be presented on an
// AXI W channel or AXI-Stream port in the cycle it is addressed and held while stalled.
module vnet_buf #(
  parameter logic [31:0] W     = 8,     // bytes per beat, a power of two >= 4
  parameter logic [31:0] BYTES = 2048,  // a power of two, a multiple of W
  localparam logic [31:0] PW   = $clog2(BYTES)
) (
  input  logic              clk,
  // write port
  input  logic              wr_en,
  input  logic [PW-1:0]     wr_base,
  input  logic [W-1:0]      wr_mask,
  input  logic [8*W-1:0]    wr_data,
  // read port
  input  logic [PW-1:0]     rd_base,
  output logic [8*W-1:0]    rd_data
);
  localparam logic [31:0] LW   = $clog2(W);
  localparam logic [31:0] ROWS = BYTES / W;
  localparam logic [31:0] RW   = PW - LW;

  logic [7:0] mem [W][ROWS];
  // The banks start at zero, as they do in a 2-state simulator (Verilator), so in a 4-state one
  // (Icarus) bytes never written (lanes outside a beat's tkeep or wstrb) read 0 instead of X.
  initial begin
    for (int unsigned j = 0; j < W; j++) begin
      for (int unsigned r = 0; r < ROWS; r++) mem[j][r] = 8'h00;
    end
  end

  // Bank j serves lane (j - base) mod W, at the row of position base + that lane.
  logic [LW-1:0] wr_lane [W];
  logic [RW-1:0] wr_row  [W];
  logic [RW-1:0] rd_row  [W];
  logic [7:0]    rd_bank [W];

  // base_lo + lane is j, or j + W when bank j lies before base's lane 0: then the row is the next one.
  always_comb begin
    for (int unsigned j = 0; j < W; j++) begin
      wr_lane[j] = LW'(j) - wr_base[LW-1:0];
      wr_row[j]  = wr_base[PW-1:LW] + RW'(LW'(j) < wr_base[LW-1:0]);
      rd_row[j]  = rd_base[PW-1:LW] + RW'(LW'(j) < rd_base[LW-1:0]);
    end
  end

  always_ff @(posedge clk) begin
    if (wr_en) begin
      for (int unsigned j = 0; j < W; j++) begin
        if (wr_mask[wr_lane[j]]) mem[j][wr_row[j]] <= wr_data[8*wr_lane[j] +: 8];
      end
    end
  end

  always_comb begin
    for (int unsigned j = 0; j < W; j++) rd_bank[j] = mem[j][rd_row[j]];
    // lane k comes from bank (base + k) mod W
    for (int unsigned k = 0; k < W; k++) rd_data[8*k +: 8] = rd_bank[LW'(rd_base[LW-1:0] + LW'(k))];
  end
endmodule
