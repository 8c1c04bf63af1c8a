// AXI4 master for the ring engine: moves one byte range per command.
//
// A command is (write?, small?, addr, len, pos). It is split into INCR bursts of at most
// MAX_BURST beats that never cross a 4 KiB boundary (AXI4 A3.4.1). Beats are aligned to
// the data width; the first and last beat carry only the lanes inside [addr, addr+len)
// (WSTRB on writes, lanes ignored on reads), so any byte alignment of guest buffers works.
//
// Lane k of the beat at address A is byte position pos + (A + k - addr) of the source or
// sink: a frame buffer (vnet_buf, through the buf_* ports) or, for "small" commands, the
// 16-byte small_rdata register (ring indices, descriptors) / 8-byte small_wdata value
// (used elements, used idx, avail_event).
//
// One transaction is outstanding at a time, and a write completes only with its B
// response: everything the engine wrote earlier is visible before the next command
// starts, which is the ordering the split ring needs (buffers, then used elements, then
// used idx).
//
// Dirty page log (README.md, BAR0 0x3F00): while log_enable is set, a write burst the host
// accepted (B OKAY) leaves its 4 KiB page pending (a burst never crosses a page); when the
// command moves on to another page or ends, the pending page p gets its log write, the byte
// 0x01 at log_base + p, a one-beat burst on this same master, before the next burst or the
// done pulse. So the engine never sees a write done (and never writes a used idx after it)
// before the write is in the log. p >= log_pages pulses log_overflow instead; a log write
// the host refuses, or a log address beyond ADDR_W, pulses log_fault. Log writes are not
// logged; a refused guest burst logs nothing of its own; cmd_nolog leaves a command unlogged.
// log_enable 0 lets no new log write start (a pending page is dropped); log_busy is high
// while one is in flight.
module vnet_dma #(
  parameter logic [31:0] ADDR_W    = 64,
  parameter logic [31:0] DATA_W    = 64,   // 32..1024
  parameter logic [31:0] ID_W      = 4,
  parameter logic [31:0] MAX_BURST = 16,   // beats, 1..256
  parameter logic [31:0] PW        = 11,   // frame buffer position width
  localparam logic [31:0] W        = DATA_W / 8
) (
  input  logic                clk,
  input  logic                rst_n,

  // command
  input  logic                cmd_valid,
  output logic                cmd_ready,
  input  logic                cmd_write,
  input  logic                cmd_small,
  input  logic [63:0]         cmd_addr,    // beyond ADDR_W: fails without a bus access
  input  logic [31:0]         cmd_len,
  input  logic [PW-1:0]       cmd_pos,
  input  logic [63:0]         cmd_wdata,
  input  logic                cmd_nolog,   // write: not logged in the dirty page log
  output logic                done,        // one cycle, command finished
  output logic                done_err,    // with done: a response was not OKAY
  output logic [127:0]        small_rdata,

  // frame buffer ports: reads land in one buffer, writes are sourced from another
  output logic                buf_wr_en,
  output logic [PW-1:0]       buf_wr_base,
  output logic [W-1:0]        buf_wr_mask,
  output logic [DATA_W-1:0]   buf_wr_data,
  output logic [PW-1:0]       buf_rd_base,
  input  logic [DATA_W-1:0]   buf_rd_data,

  // dirty page log settings and events
  `VNET_LOG_PORTS(input, output),

  // AXI4 master
  `VNET_AXI4_MASTER_PORTS
);
  localparam logic [31:0] LW = $clog2(W);
  localparam logic [ID_W-1:0] ID = '0;
  localparam logic [12:0] BEATS_PER_4K = 13'(4096 / W);
  localparam logic [63:0] ADDR_HI = 64'(~((65'd1 << ADDR_W) - 65'd1));

  // D_LOG decides about the pending page; D_LAW, D_LW, D_LB carry its log write
  typedef enum logic [3:0] {D_IDLE, D_AR, D_R, D_AW, D_W, D_B, D_LOG, D_LAW, D_LW, D_LB} state_e;
  state_e state;

  logic              write_q, small_q, err_q;
  logic [ADDR_W-1:0] cur_addr;    // next byte to move (aligned after the first burst)
  logic [32:0]       remaining;   // bytes still to move from cur_addr
  logic [PW-1:0]     bias;        // pos - addr: lane 0 of the beat at A is position bias + A
  logic [ADDR_W-1:0] beat_addr;   // aligned address of the current beat
  logic [8:0]        beats_left;  // beats left in the current burst
  logic [LW-1:0]     lo;          // first lane of the current beat
  logic [63:0]       wdata_q;

  // ---- dirty page log -------------------------------------------------------------------------
  localparam logic [31:0] PGW = ADDR_W - 12;  // page number width
  logic              nolog_q;     // this command is not logged
  logic [PGW-1:0]    burst_page;  // page of the current write burst
  logic              log_pend;    // burst_page was written (B OKAY) and waits for its log write
  logic              fin_q;       // after the log write: the command is done ...
  logic              fin_err_q;   // ... with this done_err
  logic [ADDR_W-1:0] log_addr;    // the log byte being written
  logic [63:0]       log_target;  // log_base + burst_page
  logic              in_log;      // the master carries a log write
  assign log_target = log_base + 64'(burst_page);
  assign in_log     = state == D_LAW || state == D_LW || state == D_LB;
  assign log_busy   = in_log;

  // ---- burst sizing: to the end of the range, the 4 KiB boundary, MAX_BURST ---------------
  logic [ADDR_W-1:0] abase;
  logic [33:0]       beats_needed;
  logic [12:0]       beats_to_4k;
  logic [8:0]        nbeats;
  always_comb begin
    abase        = {cur_addr[ADDR_W-1:LW], LW'(0)};
    beats_needed = (34'(cur_addr[LW-1:0]) + 34'(remaining) + 34'(W - 1)) >> LW;
    beats_to_4k  = BEATS_PER_4K - 13'(abase[11:LW]);
    nbeats       = 9'(MAX_BURST);
    if (34'(beats_to_4k) < 34'(nbeats)) nbeats = 9'(beats_to_4k);
    if (beats_needed < 34'(nbeats))     nbeats = 9'(beats_needed);
  end

  // ---- lanes of the current beat --------------------------------------------------------------
  logic [32:0]       take;        // bytes in this beat
  logic [W-1:0]      lane_mask;
  logic [PW-1:0]     beat_pos;    // position of lane 0
  always_comb begin
    take = 33'(W) - 33'(lo);
    if (remaining < take) take = remaining;
    for (int unsigned k = 0; k < W; k++) begin
      lane_mask[k] = (33'(k) >= 33'(lo)) && (33'(k) < 33'(lo) + take);
    end
    beat_pos = bias + beat_addr[PW-1:0];
  end

  // small commands: byte position pos of lane k is beat_pos + k, always < 16 on a masked lane
  logic [DATA_W-1:0] small_wbeat;
  always_comb begin
    for (int unsigned k = 0; k < W; k++) begin
      logic [2:0] p;  // low bits of beat_pos + k
      p = beat_pos[2:0] + 3'(k);
      small_wbeat[8*k +: 8] = wdata_q[8*p +: 8];
    end
  end

  assign cmd_ready     = (state == D_IDLE);
  assign m_axi_awid    = ID;
  assign m_axi_arid    = ID;
  assign m_axi_awaddr  = in_log ? {log_addr[ADDR_W-1:LW], LW'(0)} : abase;
  assign m_axi_araddr  = abase;
  assign m_axi_awlen   = in_log ? 8'd0 : 8'(nbeats - 9'd1);
  assign m_axi_arlen   = 8'(nbeats - 9'd1);
  assign m_axi_awsize  = 3'(LW);
  assign m_axi_arsize  = 3'(LW);
  assign m_axi_awburst = 2'b01;  // INCR
  assign m_axi_arburst = 2'b01;
  assign m_axi_awlock  = 1'b0;
  assign m_axi_arlock  = 1'b0;
  assign m_axi_awcache = 4'b0011;  // normal non-cacheable bufferable
  assign m_axi_arcache = 4'b0011;
  assign m_axi_awprot  = 3'b000;   // unprivileged, secure, data
  assign m_axi_arprot  = 3'b000;
  assign m_axi_awvalid = (state == D_AW) || (state == D_LAW);
  assign m_axi_arvalid = (state == D_AR);
  assign m_axi_wvalid  = (state == D_W) || (state == D_LW);
  assign m_axi_wdata   = in_log ? {W{8'h01}} : small_q ? small_wbeat : buf_rd_data;
  assign m_axi_wstrb   = in_log ? W'(1) << log_addr[LW-1:0] : lane_mask;
  assign m_axi_wlast   = in_log || (beats_left == 9'd1);
  assign m_axi_bready  = (state == D_B) || (state == D_LB);
  assign m_axi_rready  = (state == D_R);

  assign buf_rd_base   = beat_pos;
  assign buf_wr_base   = beat_pos;
  assign buf_wr_mask   = lane_mask;
  assign buf_wr_data   = m_axi_rdata;
  assign buf_wr_en     = (state == D_R) && m_axi_rvalid && !small_q;

  // A response that is not OKAY, from another ID, or an RLAST out of place is a failed access.
  logic r_bad, b_bad;
  assign r_bad = (m_axi_rresp != 2'b00) || (m_axi_rid != ID) || (m_axi_rlast != (beats_left == 9'd1));
  assign b_bad = (m_axi_bresp != 2'b00) || (m_axi_bid != ID);

  // at a write burst's response: a page is pending after it (this burst's or an earlier one's in the
  // same page), and the command leaves the page (it ends, or its next burst starts in another page)
  logic pend_now, leave_page;
  assign pend_now   = log_pend || (!b_bad && log_enable && !nolog_q);
  assign leave_page = remaining == 33'd0 || b_bad || cur_addr[ADDR_W-1:12] != burst_page;

  // D_LOG: the pending page is past the bytemap, or its log byte past ADDR_W (neither is written)
  logic log_over, log_badaddr;
  assign log_over    = 64'(burst_page) >= 64'(log_pages);
  assign log_badaddr = (log_target & ADDR_HI) != 64'h0;
  // the pending page is dealt with this cycle (dropped, refused, or its log write answered): after it
  // comes the command's done pulse or its next burst
  logic log_step;
  assign log_step = (state == D_LOG && (!log_enable || log_over || log_badaddr)) || (state == D_LB && m_axi_bvalid);

  always_ff @(posedge clk or negedge rst_n) begin
    if (!rst_n) begin
      state       <= D_IDLE;
      done        <= 1'b0;
      done_err    <= 1'b0;
      write_q     <= 1'b0;
      small_q     <= 1'b0;
      err_q       <= 1'b0;
      cur_addr    <= '0;
      remaining   <= '0;
      bias        <= '0;
      beat_addr   <= '0;
      beats_left  <= '0;
      lo          <= '0;
      wdata_q     <= '0;
      small_rdata <= '0;
      nolog_q     <= 1'b0;
      burst_page  <= '0;
      log_pend    <= 1'b0;
      fin_q       <= 1'b0;
      fin_err_q   <= 1'b0;
      log_addr    <= '0;
      log_overflow <= 1'b0;
      log_fault   <= 1'b0;
    end else begin
      done         <= 1'b0;
      done_err     <= 1'b0;
      log_overflow <= 1'b0;
      log_fault    <= 1'b0;
      unique case (state)
        D_IDLE: if (cmd_valid) begin
          write_q   <= cmd_write;
          small_q   <= cmd_small;
          err_q     <= 1'b0;
          cur_addr  <= ADDR_W'(cmd_addr);
          remaining <= 33'(cmd_len);
          bias      <= cmd_pos - cmd_addr[PW-1:0];
          wdata_q   <= cmd_wdata;
          nolog_q   <= cmd_nolog;
          log_pend  <= 1'b0;
          if (cmd_small) small_rdata <= '0;
          if (cmd_len == 32'd0 || (cmd_addr & ADDR_HI) != 64'h0) begin
            done     <= 1'b1;
            done_err <= cmd_len != 32'd0;
          end else begin
            state <= cmd_write ? D_AW : D_AR;
          end
        end
        D_AR, D_AW: if ((state == D_AR && m_axi_arready) || (state == D_AW && m_axi_awready)) begin
          beat_addr  <= abase;
          beats_left <= nbeats;
          lo         <= cur_addr[LW-1:0];
          burst_page <= abase[ADDR_W-1:12];
          state      <= write_q ? D_W : D_R;
        end
        D_R, D_W: if ((state == D_R && m_axi_rvalid) || (state == D_W && m_axi_wready)) begin
          if (state == D_R) begin
            if (r_bad) err_q <= 1'b1;
            if (small_q) begin
              for (int unsigned k = 0; k < W; k++) begin
                logic [3:0] p;  // low bits of beat_pos + k
                p = beat_pos[3:0] + 4'(k);
                if (lane_mask[k]) small_rdata[8*p +: 8] <= m_axi_rdata[8*k +: 8];
              end
            end
          end
          remaining  <= remaining - take;
          beat_addr  <= beat_addr + ADDR_W'(W);
          beats_left <= beats_left - 9'd1;
          lo         <= '0;
          if (beats_left == 9'd1) begin
            cur_addr <= beat_addr + ADDR_W'(W);
            if (state == D_W) begin
              state <= D_B;
            end else if (remaining == take || r_bad || err_q) begin
              state    <= D_IDLE;
              done     <= 1'b1;
              done_err <= r_bad || err_q;
            end else begin
              state <= D_AR;
            end
          end
        end
        D_B: if (m_axi_bvalid) begin
          if (!b_bad && log_enable && !nolog_q) log_pend <= 1'b1;
          fin_q     <= remaining == 33'd0 || b_bad;
          fin_err_q <= b_bad;
          if (pend_now && leave_page) begin
            state <= D_LOG;
          end else if (remaining == 33'd0 || b_bad) begin
            state    <= D_IDLE;
            done     <= 1'b1;
            done_err <= b_bad;
          end else begin
            state <= D_AW;
          end
        end
        // the pending page: its log write, or OVERFLOW / FAULT without one, or nothing once disabled
        D_LOG: begin
          log_pend <= 1'b0;
          if (log_enable) begin
            if (log_over)         log_overflow <= 1'b1;
            else if (log_badaddr) log_fault <= 1'b1;
            else begin
              log_addr <= ADDR_W'(log_target);
              state    <= D_LAW;
            end
          end
        end
        D_LAW: if (m_axi_awready) state <= D_LW;
        D_LW:  if (m_axi_wready) state <= D_LB;
        D_LB:  if (m_axi_bvalid && b_bad) log_fault <= 1'b1;
        default: state <= D_IDLE;
      endcase
      if (log_step) begin
        if (fin_q) begin
          state    <= D_IDLE;
          done     <= 1'b1;
          done_err <= fin_err_q;
        end else begin
          state <= D_AW;
        end
      end
    end
  end
endmodule
