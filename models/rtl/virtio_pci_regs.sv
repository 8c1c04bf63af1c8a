// virtio-pci modern register blocks of BAR0 behind an AXI4-Lite slave (32-bit data):
//   0x0000 common configuration (4.1.4.3)       0x2000 virtio-net device configuration (5.1.4)
//   0x1000 ISR status, read to clear (4.1.4.5)   0x3000 notification doorbells (4.1.4.4)
//   0x3800 vendor block: per-queue {used_idx, last_avail_idx} (vq state for vDPA set/get_vq_state; on packed
//          rings {used wrap, used offset, avail wrap, avail offset}, vhost-user's packed state), queues 0..447
//   0x3F00 vendor block: dirty page log (LOG_BASE_LO/HI, LOG_PAGES, LOG_CTRL, LOG_STATUS); the DMA unit
//          (vnet_dma) makes the log writes, this block holds the settings and the status
// plus the interrupt unit: queue and configuration notifications become MSI-X requests
// (vector + valid/ready) or ISR bits and the INTx level, as the function's MSI-X enable says.
//
// The ring engine owns the queues' progress (last_avail_idx, used_idx); this block owns their
// configuration. Device reset (device_status 0) and queue reset (queue_reset 1) are requests
// the engine acknowledges at a point where no bus transfer of the queue is in flight; until
// then device_status and queue_reset keep reading non-zero (PCI-DRV-19, PCI-DRV-21).
module virtio_pci_regs
  import virtio_pkg::*;
#(
  parameter logic [31:0] NUM_QUEUES     = 2,
  parameter logic [31:0] MAX_QUEUE_SIZE = 256,   // power of two <= 32768
  parameter logic [31:0] MSIX_VECTORS   = 3,     // MSI-X table size of the function (bridge side)
  parameter logic [63:0] FEATURES       = 64'h0,
  parameter logic [47:0] MAC            = 48'h02_00_00_00_00_01,
  parameter logic [15:0] MTU            = 16'd1500,
  parameter logic [15:0] MAX_VQ_PAIRS   = 16'd1,
  localparam logic [31:0] QW            = NUM_QUEUES > 1 ? $clog2(NUM_QUEUES) : 1
) (
  input  logic                         clk,
  input  logic                         rst_n,

  // AXI4-Lite slave
  `VNET_AXIL_SLAVE_PORTS,

  input  logic                         link_up,
  input  logic                         msix_enabled,     // MSI-X Enable of the function's capability

  // interrupt requests (MSI-X vector numbers) and legacy INTx level
  output logic                         irq_valid,
  output logic [15:0]                  irq_vector,
  input  logic                         irq_ready,
  output logic                         intx,

  // to / from the ring engine; vqs_wr_half: [0] last_avail_idx, [1] used_idx
  `VNET_ENGINE_PORTS(output, input),

  // debug / status for a bridge or bench
  output logic [7:0]                   device_status,
  output err_e                         last_err_code,
  output logic [QW-1:0]                last_err_queue,
  output logic [15:0]                  err_count
);
  localparam logic [31:0] NOTIFY_LEN = NOTIFY_OFF_MULTIPLIER * (NUM_QUEUES - 1) + 2;
  localparam logic [11:0] VQS_OFF    = 12'h800;  // vendor vq state block inside the notify page
  localparam logic [11:0] LOG_OFF    = 12'hF00;  // vendor dirty page log block, five words
  // dirty page log registers, by offset - LOG_OFF
  localparam logic [7:0]  LOG_BASE_LO = 8'h00, LOG_BASE_HI = 8'h04, LOG_PAGES = 8'h08, LOG_CTRL = 8'h0C,
                          LOG_STATUS = 8'h10;

  // ---- state ------------------------------------------------------------------------------------
  logic [31:0] device_feature_select, driver_feature_select;
  logic [63:0] driver_features;
  logic        driver_features_high;  // a non-zero bit was written above bit 63, where nothing is offered
  logic [15:0] config_msix_vector;
  logic [7:0]  status;
  logic [7:0]  config_generation;
  logic [15:0] queue_select;
  logic [1:0]  isr;
  logic        resetting;
  logic        link_q;
  logic [NUM_QUEUES-1:0][15:0] q_vector;
  logic [NUM_QUEUES-1:0]       irq_pending;
  logic        cfg_irq_pending;
  logic [1:0]  log_status;  // {FAULT, OVERFLOW}, write 1 to clear

  assign device_status = status;
  assign dev_reset_req = resetting;
  assign live = !resetting && (status & (S_DRIVER_OK | S_FEATURES_OK)) == (S_DRIVER_OK | S_FEATURES_OK)
                && (status & (S_DEVICE_NEEDS_RESET | S_FAILED)) == 8'h00;
  assign intx = (isr != 2'b00) && !msix_enabled;

  logic sel_ok;
  logic [QW-1:0] sel;
  assign sel_ok = 32'(queue_select) < NUM_QUEUES;
  assign sel    = QW'(queue_select);
  // the selected queue's ring addresses, named once (Icarus 11 cannot part-select a variably indexed
  // element of a packed array)
  logic [63:0] sel_desc, sel_driver, sel_device;
  assign sel_desc   = q_desc[sel];
  assign sel_driver = q_driver[sel];
  assign sel_device = q_device[sel];

  // FEATURES_OK sticks for a subset of the offer that includes VERSION_1 and honours the one
  // dependency among the offered bits: MQ needs CTRL_VQ (FEAT-DEV-03, NETFEAT-DEV-09)
  function automatic logic features_acceptable(input logic [63:0] f);
    return (f & ~FEATURES) == 64'h0 && f[F_VERSION_1] && !(f[F_NET_MQ] && !f[F_NET_CTRL_VQ]);
  endfunction

  function automatic logic [15:0] valid_vector(input logic [15:0] v);
    return (v == NO_VECTOR || 32'(v) < MSIX_VECTORS) ? v : NO_VECTOR;  // PCI-DEV-56/61
  endfunction

  function automatic logic [31:0] merge32(input logic [31:0] old, input logic [31:0] wd, input logic [3:0] strb);
    logic [31:0] r;
    for (int i = 0; i < 4; i++) r[8*i +: 8] = strb[i] ? wd[8*i +: 8] : old[8*i +: 8];
    return r;
  endfunction

  function automatic logic [15:0] merge16(input logic [15:0] old, input logic [15:0] wd, input logic [1:0] strb);
    return {strb[1] ? wd[15:8] : old[15:8], strb[0] ? wd[7:0] : old[7:0]};
  endfunction

  // Split rings (PCI-DRV-17, SPLIT-DRV-01): a power of two <= the maximum, 16/2/4-byte aligned parts. Packed rings
  // (VIRTIO_F_RING_PACKED negotiated; 2.8, PACKED-DRV-01): any size 1..the maximum, 16/4/4-byte aligned parts.
  function automatic logic ring_config_ok(input logic packed_ring, input logic [15:0] size, input logic [3:0] desc_lo,
                                          input logic [1:0] driver_lo, input logic [1:0] device_lo);
    return size != 16'd0 && (packed_ring || (size & (size - 16'd1)) == 16'd0) && 32'(size) <= MAX_QUEUE_SIZE
           && desc_lo == 4'h0 && driver_lo[0] == 1'b0 && !(packed_ring && driver_lo[1]) && device_lo == 2'b00;
  endfunction

  // ---- AXI4-Lite write channel ----------------------------------------------------------------
  logic        aw_got, w_got;
  logic [13:0] aw_addr;
  logic [31:0] w_data;
  logic [3:0]  w_strb;
  logic        do_write;
  assign s_axil_awready = !aw_got && !s_axil_bvalid;
  assign s_axil_wready  = !w_got && !s_axil_bvalid;
  assign do_write       = aw_got && w_got && !s_axil_bvalid;
  assign s_axil_bresp   = 2'b00;

  // ---- AXI4-Lite read channel -----------------------------------------------------------------
  assign s_axil_arready = !s_axil_rvalid;
  assign s_axil_rresp   = 2'b00;
  logic do_read;
  assign do_read = s_axil_arvalid && s_axil_arready;

  logic [31:0] rd_word;
  logic [11:0] ra;
  assign ra = s_axil_araddr[11:0];
  always_comb begin
    rd_word = 32'h0;
    unique case (s_axil_araddr[13:12])
      2'd0: if (ra < 12'(COMMON_CFG_LEN)) begin
        unique case (ra[5:2])
          CC_DEVICE_FEATURE_SELECT: rd_word = device_feature_select;
          // PCI-DEV-14: 32 bits of the offer per select value, 0 past bit 63
          CC_DEVICE_FEATURE: rd_word = device_feature_select == 32'd0 ? FEATURES[31:0]
                                     : device_feature_select == 32'd1 ? FEATURES[63:32] : 32'h0;
          CC_DRIVER_FEATURE_SELECT: rd_word = driver_feature_select;
          CC_DRIVER_FEATURE: rd_word = driver_feature_select == 32'd0 ? driver_features[31:0]
                                     : driver_feature_select == 32'd1 ? driver_features[63:32] : 32'h0;
          CC_MSIX_NUMQ:       rd_word = {16'(NUM_QUEUES), config_msix_vector};
          CC_STATUS_GEN_QSEL: rd_word = {queue_select, config_generation, status};
          CC_QSIZE_QVEC:      rd_word = sel_ok ? {q_vector[sel], q_size[sel]} : {NO_VECTOR, 16'h0};
          CC_QENABLE_QNOFF:   rd_word = sel_ok ? {16'(sel), 15'h0, q_enable[sel]} : 32'h0;
          CC_QUEUE_DESC_LO:   rd_word = sel_ok ? sel_desc[31:0] : 32'h0;
          CC_QUEUE_DESC_HI:   rd_word = sel_ok ? sel_desc[63:32] : 32'h0;
          CC_QUEUE_DRIVER_LO: rd_word = sel_ok ? sel_driver[31:0] : 32'h0;
          CC_QUEUE_DRIVER_HI: rd_word = sel_ok ? sel_driver[63:32] : 32'h0;
          CC_QUEUE_DEVICE_LO: rd_word = sel_ok ? sel_device[31:0] : 32'h0;
          CC_QUEUE_DEVICE_HI: rd_word = sel_ok ? sel_device[63:32] : 32'h0;
          CC_NOTIFDATA_QRESET: rd_word = sel_ok ? {15'h0, qreset_req[sel], 16'h0} : 32'h0;
          CC_ADMIN_QUEUE:     rd_word = 32'h0;  // admin_queue_index/num: no admin virtqueue
          default: rd_word = 32'h0;
        endcase
      end
      2'd1: if (ra[11:2] == 10'd0) rd_word = {30'h0, isr};
      2'd2: if (ra < 12'(NET_CFG_LEN)) unique case ({ra[3:2], 2'b00})
        4'h0: rd_word = {MAC[23:16], MAC[31:24], MAC[39:32], MAC[47:40]};
        4'h4: rd_word = {link_q ? VIRTIO_NET_S_LINK_UP : 16'h0, MAC[7:0], MAC[15:8]};
        4'h8: rd_word = {MTU, MAX_VQ_PAIRS};
        default: rd_word = 32'h0;
      endcase
      2'd3: if (ra >= LOG_OFF) begin
        unique case ({ra[7:2], 2'b00})
          LOG_BASE_LO: rd_word = log_base[31:0];
          LOG_BASE_HI: rd_word = log_base[63:32];
          LOG_PAGES:   rd_word = log_pages;
          LOG_CTRL:    rd_word = {30'h0, log_busy, log_enable};
          LOG_STATUS:  rd_word = {30'h0, log_status};
          default:     rd_word = 32'h0;
        endcase
      end else if (ra >= VQS_OFF && 32'(ra[10:2]) < NUM_QUEUES) begin
        rd_word = {vqs_used_idx[QW'(ra[10:2])], vqs_last_avail[QW'(ra[10:2])]};
      end
      default: rd_word = 32'h0;
    endcase
  end

  // ---- write decode (combinational pieces used by the sequential block) ------------------------
  logic [11:0] wa;
  logic [1:0]  wreg;
  assign wa   = aw_addr[11:0];
  assign wreg = aw_addr[13:12];
  logic wr_common, wr_notify, wr_vqs, wr_log;
  assign wr_common = do_write && wreg == 2'd0 && wa < 12'(COMMON_CFG_LEN);
  assign wr_notify = do_write && wreg == 2'd3 && 32'(wa) < NOTIFY_LEN;
  assign wr_vqs    = do_write && wreg == 2'd3 && wa >= VQS_OFF && wa < LOG_OFF && 32'(wa[10:2]) < NUM_QUEUES;
  assign wr_log    = do_write && wreg == 2'd3 && wa >= LOG_OFF && !resetting;
  logic [3:0] wword;  // common_cfg_word_e
  assign wword = wa[5:2];

  // queue_enable 1 with a configuration that cannot run: the queue stays off, the device needs a reset
  logic enable_write, enable_bad;
  assign enable_write = wr_common && wword == CC_QENABLE_QNOFF && w_strb[0] && w_data[15:0] == 16'd1
                        && sel_ok && !q_enable[sel] && !resetting;
  assign enable_bad   = enable_write && !ring_config_ok(negotiated[F_RING_PACKED], q_size[sel], sel_desc[3:0], sel_driver[1:0],
                                                     sel_device[1:0]);

  // driver errors (this block's or the engine's) and configuration changes
  logic any_fail, link_change, cfg_irq;
  assign any_fail    = (fail_valid || enable_bad) && !resetting;
  assign link_change = link_up != link_q;
  assign cfg_irq     = ((any_fail && !status[6]) || link_change) && (status & S_DRIVER_OK) != 8'h0 && !resetting;

  // ISR bits: queue (INTx only, PCI-DEV-39), configuration (always, before the message: PCI-DEV-38)
  logic [1:0] isr_set;
  assign isr_set = ((q_irq_valid && !resetting && !msix_enabled) ? ISR_QUEUE : 2'b00) | (cfg_irq ? ISR_CONFIG : 2'b00);

  assign kick_valid   = wr_notify && !resetting && 32'(w_data[15:0]) < NUM_QUEUES && w_strb[1:0] == 2'b11;
  assign kick_queue   = QW'(w_data[15:0]);  // the vq index written (PCI-DRV-28), not the address
  assign vqs_wr_valid = wr_vqs && !resetting && !q_enable[QW'(wa[10:2])];
  assign vqs_wr_queue = QW'(wa[10:2]);
  assign vqs_wr_data  = w_data;
  assign vqs_wr_half  = {|w_strb[3:2], |w_strb[1:0]};

  always_ff @(posedge clk or negedge rst_n) begin
    if (!rst_n) begin
      aw_got <= 1'b0; w_got <= 1'b0; aw_addr <= '0; w_data <= '0; w_strb <= '0;
      s_axil_bvalid <= 1'b0; s_axil_rvalid <= 1'b0; s_axil_rdata <= '0;
      device_feature_select <= '0; driver_feature_select <= '0; driver_features <= '0;
      driver_features_high <= 1'b0;
      negotiated <= '0; config_msix_vector <= NO_VECTOR; status <= '0; config_generation <= '0;
      queue_select <= '0; isr <= '0; resetting <= 1'b0; link_q <= 1'b0;
      q_vector <= {NUM_QUEUES{NO_VECTOR}}; q_enable <= '0; qreset_req <= '0;
      q_size <= {NUM_QUEUES{16'(MAX_QUEUE_SIZE)}}; q_desc <= '0; q_driver <= '0; q_device <= '0;
      irq_pending <= '0; cfg_irq_pending <= 1'b0; irq_valid <= 1'b0; irq_vector <= NO_VECTOR;
      last_err_code <= ERR_NONE; last_err_queue <= '0; err_count <= '0;
      log_enable <= 1'b0; log_base <= '0; log_pages <= '0; log_status <= '0;
    end else begin
      // -- AXI-Lite handshakes
      if (s_axil_awvalid && s_axil_awready) begin aw_got <= 1'b1; aw_addr <= s_axil_awaddr; end
      if (s_axil_wvalid && s_axil_wready) begin w_got <= 1'b1; w_data <= s_axil_wdata; w_strb <= s_axil_wstrb; end
      if (do_write) begin aw_got <= 1'b0; w_got <= 1'b0; s_axil_bvalid <= 1'b1; end
      if (s_axil_bvalid && s_axil_bready) s_axil_bvalid <= 1'b0;
      if (s_axil_rvalid && s_axil_rready) s_axil_rvalid <= 1'b0;
      if (do_read) begin
        s_axil_rvalid <= 1'b1;
        s_axil_rdata  <= rd_word;
      end

      link_q <= link_up;
      if (link_change) config_generation <= config_generation + 8'd1;  // PCI-DEV-17

      // -- common configuration writes
      if (wr_common && !resetting) begin
        unique case (wword)
          CC_DEVICE_FEATURE_SELECT: device_feature_select <= merge32(device_feature_select, w_data, w_strb);
          CC_DRIVER_FEATURE_SELECT: driver_feature_select <= merge32(driver_feature_select, w_data, w_strb);
          CC_DRIVER_FEATURE:
            // fixed once FEATURES_OK is set (INIT-DRV-07); nothing is offered past bit 63
            if ((status & S_FEATURES_OK) == 8'h0) begin
              if (driver_feature_select == 32'd0)
                driver_features[31:0] <= merge32(driver_features[31:0], w_data, w_strb);
              else if (driver_feature_select == 32'd1)
                driver_features[63:32] <= merge32(driver_features[63:32], w_data, w_strb);
              else if ((w_data & {{8{w_strb[3]}}, {8{w_strb[2]}}, {8{w_strb[1]}}, {8{w_strb[0]}}}) != 32'h0)
                driver_features_high <= 1'b1;  // accepting an unoffered bit: FEATURES_OK must not stick
            end
          CC_MSIX_NUMQ:
            if (|w_strb[1:0]) config_msix_vector <= valid_vector(merge16(config_msix_vector, w_data[15:0], w_strb[1:0]));
          CC_STATUS_GEN_QSEL: begin
            if (w_strb[0]) begin
              if (w_data[7:0] == 8'h00) begin
                resetting <= 1'b1;  // completes on dev_reset_ack
              end else begin : status_write
                logic [7:0] nxt;
                // bits are cleared only by reset; DEVICE_NEEDS_RESET is the device's to set
                nxt = status | (w_data[7:0] & ~S_DEVICE_NEEDS_RESET);
                if ((nxt & S_FEATURES_OK) != 8'h0 && (status & S_FEATURES_OK) == 8'h0) begin
                  if (features_acceptable(driver_features) && !driver_features_high) negotiated <= driver_features;
                  else nxt = nxt & ~S_FEATURES_OK;  // FEAT-DEV-03: the bit does not stick
                end
                status <= nxt;
              end
            end
            if (|w_strb[3:2]) queue_select <= merge16(queue_select, w_data[31:16], w_strb[3:2]);
          end
          CC_QSIZE_QVEC: if (sel_ok) begin
            // ring configuration only changes while the queue is disabled (PCI-DRV-18)
            if (|w_strb[1:0] && !q_enable[sel]) q_size[sel] <= merge16(q_size[sel], w_data[15:0], w_strb[1:0]);
            if (|w_strb[3:2]) q_vector[sel] <= valid_vector(merge16(q_vector[sel], w_data[31:16], w_strb[3:2]));
          end
          CC_QENABLE_QNOFF: if (enable_write && !enable_bad) q_enable[sel] <= 1'b1;
          CC_QUEUE_DESC_LO:   if (sel_ok && !q_enable[sel]) q_desc[sel] <= {sel_desc[63:32], merge32(sel_desc[31:0], w_data, w_strb)};
          CC_QUEUE_DESC_HI:   if (sel_ok && !q_enable[sel]) q_desc[sel] <= {merge32(sel_desc[63:32], w_data, w_strb), sel_desc[31:0]};
          CC_QUEUE_DRIVER_LO: if (sel_ok && !q_enable[sel]) q_driver[sel] <= {sel_driver[63:32], merge32(sel_driver[31:0], w_data, w_strb)};
          CC_QUEUE_DRIVER_HI: if (sel_ok && !q_enable[sel]) q_driver[sel] <= {merge32(sel_driver[63:32], w_data, w_strb), sel_driver[31:0]};
          CC_QUEUE_DEVICE_LO: if (sel_ok && !q_enable[sel]) q_device[sel] <= {sel_device[63:32], merge32(sel_device[31:0], w_data, w_strb)};
          CC_QUEUE_DEVICE_HI: if (sel_ok && !q_enable[sel]) q_device[sel] <= {merge32(sel_device[63:32], w_data, w_strb), sel_device[31:0]};
          CC_NOTIFDATA_QRESET:
            // VIRTIO_F_RING_RESET: the queue reset runs until the engine acknowledges it (PCI-DEV-24)
            if (|w_strb[3:2] && w_data[31:16] == 16'd1 && sel_ok && negotiated[F_RING_RESET]) qreset_req[sel] <= 1'b1;
          default: ;
        endcase
      end

      // -- dirty page log: base and pages fixed while enabled; ENABLE 0->1 clears the status; the DMA unit's
      //    OVERFLOW / FAULT events win over a write-1-to-clear in the same cycle
      if (wr_log) begin
        unique case ({wa[7:2], 2'b00})
          LOG_BASE_LO: if (!log_enable) log_base[31:0]  <= merge32(log_base[31:0], w_data, w_strb);
          LOG_BASE_HI: if (!log_enable) log_base[63:32] <= merge32(log_base[63:32], w_data, w_strb);
          LOG_PAGES:   if (!log_enable) log_pages <= merge32(log_pages, w_data, w_strb);
          LOG_CTRL: if (w_strb[0]) begin
            log_enable <= w_data[0];
            if (w_data[0] && !log_enable) log_status <= 2'b00;
          end
          LOG_STATUS: if (w_strb[0]) log_status <= log_status & ~w_data[1:0];
          default: ;
        endcase
      end
      if (log_overflow) log_status[0] <= 1'b1;
      if (log_fault)    log_status[1] <= 1'b1;

      // -- driver errors: DEVICE_NEEDS_RESET, once (STATUS-DEV-02)
      if (any_fail) begin
        status            <= status | S_DEVICE_NEEDS_RESET;
        last_err_code     <= enable_bad ? ERR_QUEUE_CONFIG : fail_code;
        last_err_queue    <= enable_bad ? sel : fail_queue;
        err_count         <= err_count + 16'd1;
      end

      // -- interrupts; PCI-DEV-41: reading ISR status clears it (so INTx drops); new events win
`ifdef VNET_BUG_ISR_STICKY
      isr <= isr | isr_set;  // seeded bug (tests/test_rtl_target.py): reading ISR status does not clear it
`else
      isr <= ((do_read && s_axil_araddr[13:12] == 2'd1 && ra[11:2] == 10'd0) ? 2'b00 : isr) | isr_set;
`endif
      if (q_irq_valid && !resetting && 32'(q_irq_queue) < NUM_QUEUES) begin
        if (msix_enabled) begin
          if (q_vector[q_irq_queue] != NO_VECTOR) irq_pending[q_irq_queue] <= 1'b1;  // else PCI-DEV-62
        end
      end
      if (cfg_irq) begin
        if (msix_enabled && config_msix_vector != NO_VECTOR) cfg_irq_pending <= 1'b1;  // PCI-DEV-63
      end
      if (irq_valid) begin
        if (irq_ready) irq_valid <= 1'b0;
      end else if (cfg_irq_pending) begin
        cfg_irq_pending <= 1'b0;
        irq_valid       <= config_msix_vector != NO_VECTOR;
        irq_vector      <= config_msix_vector;
      end else if (irq_pending != '0) begin : pick
        // lowest pending queue; its vector is looked up now, so a remap in between is honoured
        logic found;
        found = 1'b0;
        for (int unsigned q = 0; q < NUM_QUEUES; q++) begin
          if (!found && irq_pending[q]) begin
            found          = 1'b1;
            irq_pending[q] <= 1'b0;
            irq_valid      <= q_vector[q] != NO_VECTOR;
            irq_vector     <= q_vector[q];
          end
        end
      end

      // -- queue resets acknowledged by the engine: back to defaults (RESET-DEV-04)
      for (int unsigned q = 0; q < NUM_QUEUES; q++) begin
        if (qreset_ack[q] && qreset_req[q]) begin
          qreset_req[q]  <= 1'b0;
          q_enable[q]    <= 1'b0;
          q_size[q]      <= 16'(MAX_QUEUE_SIZE);
          q_desc[q]      <= '0;
          q_driver[q]    <= '0;
          q_device[q]    <= '0;
          q_vector[q]    <= NO_VECTOR;
          irq_pending[q] <= 1'b0;
        end
      end

      // -- device reset acknowledged by the engine: everything back to defaults (RESET-DEV-01)
      if (resetting && dev_reset_ack) begin
        resetting             <= 1'b0;
        status                <= '0;
        negotiated            <= '0;
        driver_features       <= '0;
        driver_features_high  <= 1'b0;
        device_feature_select <= '0;
        driver_feature_select <= '0;
        queue_select          <= '0;
        config_msix_vector    <= NO_VECTOR;  // PCI-DEV-59
        isr                   <= '0;
        q_vector              <= {NUM_QUEUES{NO_VECTOR}};
        q_enable              <= '0;
        qreset_req            <= '0;
        q_size                <= {NUM_QUEUES{16'(MAX_QUEUE_SIZE)}};
        q_desc                <= '0;
        q_driver              <= '0;
        q_device              <= '0;
        irq_pending           <= '0;
        cfg_irq_pending       <= 1'b0;
        log_enable            <= 1'b0;  // the engine acknowledges in its idle state: no log write in flight
        log_base              <= '0;
        log_pages             <= '0;
        log_status            <= '0;
      end
    end
  end

  // AXI-Lite protection bits carry nothing this device distinguishes.
  logic unused;
  assign unused = ^{s_axil_awprot, s_axil_arprot, wa[1:0], ra[1:0]};
endmodule
