// Split-ring engine of the virtio-net function (virtio 1.4 2.7, 5.1.6).
//
// Queue 2n is a receive queue, 2n+1 a transmit queue, and with NUM_PAIRS > 1 the control
// queue follows (index 2 * max_virtqueue_pairs with MQ negotiated, 2 without: 5.1.2). One
// sequential engine serves them: a transmit or control queue after its doorbell (kick), a
// receive queue when a frame from the s_axis port waits in the receive buffer. Every guest memory access goes through one
// AXI4 master (vnet_dma), one transaction at a time, so buffers are written before used
// elements and used elements before used idx.
//
//   TX: read avail idx; per available chain: read the head, walk the chain (NEXT) reading
//       every device-readable buffer into the transmit buffer, stream bytes 12.. (after the
//       virtio_net_hdr) out on m_axis, write the used element (len 0); then used idx once
//       for the batch, then the notification decision.
//   CTRL: walked like TX (readable bytes into the transmit buffer); VIRTIO_NET_CTRL_MQ
//       VQ_PAIRS_SET 1..NUM_PAIRS is acknowledged OK and sets the pairs receive frames may be
//       steered to; every other command is acknowledged ERR. The ack byte goes into the first
//       device-writable byte of the chain (used len 1).
//   RX: a frame is stored behind a 12-byte virtio_net_hdr (num_buffers 1; with GUEST_CSUM
//       DATA_VALID when vnet_rx_csum validated it); read avail idx and the head, walk the chain
//       writing header + frame into the device-writable buffers; with MRG_RXBUF the frame goes
//       on in the next chains (num_buffers written once it is placed); write the used
//       elements (len = bytes written into each chain) and used idx once, then the
//       notification decision.
//   CSUM: a transmitted frame with NEEDS_CSUM gets its checksum completed in the transmit
//       buffer before it streams (see the CS_* states).
//
// Notifications: with EVENT_IDX negotiated the used_event test (vring_need_event), else
// the avail ring's VRING_AVAIL_F_NO_INTERRUPT flag, read after used idx is written.
//
// Packed rings (VIRTIO_F_RING_PACKED negotiated at FEATURES_OK, 2.8): the same walk over a ring of
// 16-byte descriptors {addr, len, id, flags}. A list is taken when its head's flags word (read
// alone, first) says available for the Driver Ring Wrap Counter; its descriptors follow in the
// next slots (NEXT), each checked available too; the Buffer ID is the last one's id. The used
// descriptor goes where the list began: id and len first, then the flags word (AVAIL = USED =
// Device Ring Wrap Counter, WRITE when bytes were written), so it is handed back by one 16-bit
// store. Positions are {wrap, offset[14:0]} in last_avail/used_idx (the vq state block shows
// vhost-user's packed state); any queue size works. After a batch the driver event suppression
// structure decides the notification (ENABLE, DISABLE, DESC with EVENT_IDX). The device event
// suppression structure is not written: it stays ENABLE (the driver's zeroed area), every kick
// is taken.
// Bound checks stop the engine with fail_valid (the register block sets DEVICE_NEEDS_RESET).
module vnet_ring_engine
  import virtio_pkg::*;
#(
  parameter logic [31:0] NUM_PAIRS    = 1,
  parameter logic [31:0] NUM_QUEUES   = 2,  // 2 * NUM_PAIRS, + 1 (control queue) when NUM_PAIRS > 1
  parameter logic [31:0] ADDR_W       = 64,
  parameter logic [31:0] DATA_W       = 64,
  parameter logic [31:0] ID_W         = 4,
  parameter logic [31:0] MAX_BURST    = 16,
  parameter logic [31:0] BUF_BYTES    = 2048,  // receive and transmit frame buffers, each
  parameter logic [15:0] MTU          = 16'd1500,
  localparam logic [31:0] QW          = NUM_QUEUES > 1 ? $clog2(NUM_QUEUES) : 1,
  localparam logic [31:0] W           = DATA_W / 8,
  localparam logic [31:0] PW          = $clog2(BUF_BYTES),
  localparam logic [31:0] PAIR_W      = NUM_PAIRS > 1 ? $clog2(NUM_PAIRS) : 1
) (
  input  logic                         clk,
  input  logic                         rst_n,

  // from / to the register block
  `VNET_ENGINE_PORTS(input, output),
  input  logic                         link_up,

  // frames from the wire (receive; tdest the queue pair asked for) and to the wire (transmit; tdest
  // the pair of the transmit queue)
  `VNET_AXIS_PORTS(s_axis, input, output),
  `VNET_AXIS_PORTS(m_axis, output, input),

  // AXI4 master (guest memory)
  `VNET_AXI4_MASTER_PORTS,

  // statistics: tx_dropped empty, over-long or link down; rx_no_buffer no available receive chain;
  // rx_dropped not ready, oversize, chain too small
  `VNET_STAT_PORTS
);
  localparam logic [PW:0] BUF  = (PW+1)'(BUF_BYTES);
  localparam logic [PW:0] HDR  = (PW+1)'(NET_HDR_LEN);
  localparam bit          HAS_CTRL    = NUM_PAIRS > 1;

  // The control queue's index depends on MQ (5.1.2: N = 1 unless MQ is negotiated).
  function automatic logic queue_is_ctrl(input logic [63:0] neg, input logic [QW-1:0] q);
    return HAS_CTRL && neg[F_NET_CTRL_VQ]
           && 32'(q) == (neg[F_NET_MQ] ? 32'(2 * NUM_PAIRS) : 32'd2);
  endfunction

  // ---- per-queue progress (the device's private ring state, RESET-DEV-04) --------------------
  logic [NUM_QUEUES-1:0][15:0] last_avail, used_idx;
  logic [NUM_QUEUES-1:0]       kick_pend;
  // vq state written through the vendor block since the queue's last reset (it starts there), and
  // queue_enable one cycle late (its rising edge is where a queue starts)
  logic [NUM_QUEUES-1:0]       vqs_loaded, q_enable_q;
  assign vqs_last_avail = last_avail;
  assign vqs_used_idx   = used_idx;

  // ---- DMA and buffers --------------------------------------------------------------------------
  logic              cmd_valid, cmd_ready, cmd_write, cmd_small;
  logic [63:0]       cmd_addr;
  logic [31:0]       cmd_len;
  logic [PW-1:0]     cmd_pos;
  logic [63:0]       cmd_wdata;
  logic              cmd_nolog;
  logic              dma_done, dma_err;
  logic [127:0]      small_rdata;
  logic              txb_wr_en;
  logic [PW-1:0]     txb_wr_base, dma_rd_base, txb_rd_base, rxb_wr_base;
  logic [W-1:0]      txb_wr_mask, rxb_wr_mask;
  logic [DATA_W-1:0] txb_wr_data, txb_rd_data, rxb_rd_data, dma_rd_data;
  logic              rxb_wr_en;
  logic [PW-1:0]     cs_rd_base;      // transmit buffer read position while no frame streams
  logic              dma_wr_en;       // the DMA's read data into the transmit buffer
  logic [PW-1:0]     dma_wr_base;
  logic [W-1:0]      dma_wr_mask;
  logic [DATA_W-1:0] dma_wr_data;

  // .*: the command ports, small_rdata, the dirty page log ports and the AXI4 master by their names
  vnet_dma #(.ADDR_W(ADDR_W), .DATA_W(DATA_W), .ID_W(ID_W), .MAX_BURST(MAX_BURST), .PW(PW)) u_dma (
    .*, .done(dma_done), .done_err(dma_err),
    .buf_wr_en(dma_wr_en), .buf_wr_base(dma_wr_base), .buf_wr_mask(dma_wr_mask), .buf_wr_data(dma_wr_data),
    .buf_rd_base(dma_rd_base), .buf_rd_data(dma_rd_data)
  );

  vnet_buf #(.W(W), .BYTES(BUF_BYTES)) u_txbuf (
    .clk, .wr_en(txb_wr_en), .wr_base(txb_wr_base), .wr_mask(txb_wr_mask), .wr_data(txb_wr_data),
    .rd_base(txb_rd_base), .rd_data(txb_rd_data)
  );

  vnet_buf #(.W(W), .BYTES(BUF_BYTES)) u_rxbuf (
    .clk, .wr_en(rxb_wr_en), .wr_base(rxb_wr_base), .wr_mask(rxb_wr_mask), .wr_data(s_axis_tdata),
    .rd_base(rxb_rd_base), .rd_data(rxb_rd_data)
  );

  // Receive buffer positions 0..11 are the virtio_net_hdr: all zero but num_buffers = 1 (NET-DEV-30/34/55;
  // MRG_RXBUF rewrites it for a frame over several chains) and, with GUEST_CSUM, flags DATA_VALID when the
  // frame's checksums were validated (NET-DEV-62); the frame itself starts at position 12.
  logic rx_dv;  // the frame in service passed vnet_rx_csum
  always_comb begin
    for (int unsigned k = 0; k < W; k++) begin
      logic [PW-1:0] p;
      p = dma_rd_base + PW'(k);
      if (p < PW'(NET_HDR_LEN)) dma_rd_data[8*k +: 8] = (p == PW'(10)) ? 8'd1
                                                      : (p == PW'(0) && rx_dv) ? NET_HDR_F_DATA_VALID : 8'd0;
      else                      dma_rd_data[8*k +: 8] = rxb_rd_data[8*k +: 8];
    end
  end

  // ---- receive input: one frame buffered at a time (vnet_rx_in) ---------------------------------
  logic          rx_full;      // a frame waits for the engine
  logic [PW:0]   rx_len;       // its length (without header)
  logic [PAIR_W-1:0] rx_pair;  // tdest of the waiting frame
  logic          rx_consume;   // engine: the waiting frame is done with (delivered or dropped)
  logic          rx_in_drop;   // frame dropped at the input

  vnet_rx_in #(.W(W), .PW(PW), .PAIR_W(PAIR_W), .BUF_BYTES(BUF_BYTES), .HDR_LEN(NET_HDR_LEN), .MTU(MTU)) u_rx_in (
    .*, .mtu_limit(negotiated[F_NET_MTU]), .consume(rx_consume), .full(rx_full), .len(rx_len),
    .pair(rx_pair), .in_drop(rx_in_drop), .buf_wr_en(rxb_wr_en), .buf_wr_base(rxb_wr_base), .buf_wr_mask(rxb_wr_mask)
  );

  // ---- receive checksum validation (VIRTIO_NET_F_GUEST_CSUM) ------------------------------------------
  // It reads the waiting frame as soon as it is buffered, beside whatever the engine does meanwhile (the receive
  // buffer's read port is the DMA's only while it writes a receive chain, which waits for the verdict), and holds
  // the verdict until the frame is done with.
  logic              rxv_run, rxv_active, rxv_done, rxv_valid;
  logic [PW-1:0]     rxv_rd_base, rxb_rd_base;
  assign rxv_run     = negotiated[F_NET_GUEST_CSUM] && rx_full && !rx_consume;
  assign rxb_rd_base = rxv_active ? rxv_rd_base : dma_rd_base;
`ifdef VNET_BUG_DATA_VALID_UNCHECKED
  assign rx_dv       = rxv_done;  // seeded bug (tests/test_rtl_target.py): DATA_VALID whatever the checksums
`else
  assign rx_dv       = rxv_done && rxv_valid;
`endif
  vnet_rx_csum #(.W(W), .PW(PW), .HDR_LEN(NET_HDR_LEN)) u_rx_csum (
    .clk, .rst_n, .run(rxv_run), .len(rx_len), .rd_base(rxv_rd_base), .rd_data(rxb_rd_data), .active(rxv_active),
    .done(rxv_done), .valid(rxv_valid)
  );

  // ---- transmit output: streams buffer positions 12 .. tx_end-1 ---------------------------------
  logic        tx_go, tx_active;
  logic [PW:0] tx_spos, tx_end;
  // while nothing streams, the read port shows buffer bytes 0.. (a control command's header)
  // (the checksum offload reads the header fields and the summed bytes through it before the frame streams)
  assign txb_rd_base   = tx_active ? PW'(tx_spos) : cs_rd_base;
  assign m_axis_tvalid = tx_active;
  assign m_axis_tdata  = txb_rd_data;
  assign m_axis_tlast  = (PW+2)'(tx_spos) + (PW+2)'(W) >= (PW+2)'(tx_end);
  always_comb begin
    for (int unsigned k = 0; k < W; k++) m_axis_tkeep[k] = (PW+2)'(tx_spos) + (PW+2)'(k) < (PW+2)'(tx_end);
  end

  // ---- engine -----------------------------------------------------------------------------------
  // Each *_ISSUE state hands the DMA one command; its *_WAIT state, next in this order, takes the result.
  typedef enum logic [5:0] {
    E_IDLE, E_AVAIL_ISSUE, E_AVAIL_WAIT, E_EVT_ISSUE, E_EVT_WAIT, E_HEAD_ISSUE, E_HEAD_WAIT,
    E_DESC_ISSUE, E_DESC_WAIT, E_DATA_SIZE, E_DATA_ISSUE, E_DATA_WAIT, E_DATA_NEXT, E_CHAIN_END,
    E_CS_FIELDS, E_CS_SUM, E_CS_STORE,
    E_TX_STREAM, E_ACK_ISSUE, E_ACK_WAIT, E_NB_ISSUE, E_NB_WAIT, E_ELEM_ISSUE, E_ELEM_WAIT, E_UFLAGS_ISSUE,
    E_UFLAGS_WAIT, E_IDX_ISSUE, E_IDX_WAIT, E_NOTE_ISSUE, E_NOTE_WAIT, E_FAIL, E_ABORT
  } estate_e;
  estate_e state;

  logic [QW-1:0] cq;          // queue being served
  logic          is_tx;       // the device reads the chain (transmit or control queue)
  logic          is_ctrl;
  logic          have_ack;    // control chain: first device-writable byte seen
  logic [63:0]   ack_addr;
  logic [7:0]    ack_val;
  logic          ack_len;     // used len of a control chain: 1 once the ack byte is written
  logic [15:0]   active_pairs;  // set by VQ_PAIRS_SET; 1 after reset (NETCTRL-DEV-25)
  logic [PAIR_W-1:0] tx_pair;
  logic [15:0]   pending;     // chains in this batch
  logic [15:0]   batch_n;     // chains done in this batch
  logic          evt_written; // avail_event already published in this pass (EVENT_IDX)
`ifdef VNET_BUG_IDX_FIRST
  logic          idx_early;   // seeded bug: this chain's used idx already published, its element not yet
`endif
  logic [15:0]   head, cur;
  logic [16:0]   ndesc;
  logic          wr_seen;
  logic [63:0]   d_addr;
  logic [31:0]   d_len;
  logic [15:0]   d_flags, d_next;
  logic [15:0]   d_id;        // packed: the descriptor's Buffer ID
  logic          cur_wrap;    // packed: the Driver Ring Wrap Counter at slot cur
  logic [16:0]   batch_slots; // packed: ring slots used in this batch
  logic          packed_ring;
  logic [32:0]   bytes_rd;    // readable bytes of the TX chain
  logic [PW:0]   stored;      // of which held in the transmit buffer
  logic [PW:0]   written;     // RX bytes written into the chain
  logic [PW:0]   xfer;        // bytes moved by the current data command
  logic          event_idx;

  // ---- VIRTIO_NET_F_MRG_RXBUF: a frame over several receive chains (5.1.6.3.2, 5.1.6.4) ------------
  // The chains of a frame are gathered first (walked, header and frame written into them) and recorded here;
  // only when the whole frame is placed are num_buffers (when more than one), the used entries and used idx
  // written. A frame that runs out of chains (or needs more than MRG_MAX) is dropped with the ring untouched:
  // no used entry, last_avail_idx where it was.
  localparam logic [31:0] MRG_MAX = 64;
  localparam logic [31:0] MW      = $clog2(MRG_MAX);
  logic              mrg;                   // VIRTIO_NET_F_MRG_RXBUF negotiated
  logic [15:0]       rec_id    [MRG_MAX];   // split: the head; packed: the Buffer ID
  logic [PW:0]       rec_len   [MRG_MAX];   // bytes written into the chain
  logic [16:0]       rec_slots [MRG_MAX];   // packed: the list's descriptors
  logic [MW:0]       nrec;                  // chains gathered for the frame in service
  logic [15:0]       g_pos;                 // avail position of its next chain (once nrec != 0)
  logic [PW:0]       chain_w0;              // frame bytes written before the chain in service
  logic [63:0]       nb_addr;               // guest address of the header's num_buffers (low byte)
  logic [15:0]       a_pos;                 // where the next chain is looked for
  logic [MW-1:0]     ri;                    // the record the used entry in progress publishes
  logic [16:0]       slots;                 // packed: slots of the used descriptor in progress
  assign slots = is_tx ? ndesc : rec_slots[ri];
  assign mrg   = negotiated[F_NET_MRG_RXBUF];
  assign a_pos = (!is_tx && nrec != '0) ? g_pos : q_avail;
  assign ri    = MW'(batch_n);

  // ---- VIRTIO_NET_F_CSUM: the partial checksum of a transmitted frame completed (5.1.6.2) ----------
  // Once the chain is in the transmit buffer and its header has NEEDS_CSUM: the ones-complement sum of the
  // frame from csum_start to its end, W bytes a cycle through the buffer's read port, folded, complemented
  // (0 sent as 0xffff) and stored big-endian at csum_start + csum_offset before the frame streams out. A
  // header placing either outside the frame is the driver's error: the frame is dropped (stat_tx_dropped).
  logic [PW:0]       cs_pos;
  logic [PW-1:0]     cs_at;               // csum_start + csum_offset in the buffer
  logic              cs_par;              // csum_start's buffer position is odd
  logic [31:0]       cs_acc, cs_beat;
  logic [16:0]       cs_s1;
  logic [15:0]       cs_s2, cs_val;
  logic              cs_wr;
  logic [31:0]       cs_field, cs_frame;  // csum_start + csum_offset, frame length
  assign cs_rd_base = state == E_CS_FIELDS ? PW'(6) : state == E_CS_SUM ? PW'(cs_pos) : '0;
  assign cs_field   = 32'(txb_rd_data[15:0]) + 32'(txb_rd_data[31:16]);  // buffer bytes 6..9, little endian
  assign cs_frame   = 32'(stored) - NET_HDR_LEN;
  always_comb begin
    // byte k of the beat at cs_pos: even distance from csum_start the high byte of a 16-bit word
    cs_beat = '0;
    for (int unsigned k = 0; k < W; k++) begin
      if ((PW+2)'(cs_pos) + (PW+2)'(k) < (PW+2)'(stored)) begin
        if ((cs_pos[0] ^ cs_par ^ 1'(k)) == 1'b0) cs_beat = cs_beat + (32'(txb_rd_data[8*k +: 8]) << 8);
        else                                          cs_beat = cs_beat + 32'(txb_rd_data[8*k +: 8]);
      end
    end
    cs_s1  = 17'(cs_acc[15:0]) + 17'(cs_acc[31:16]);
    cs_s2  = cs_s1[15:0] + 16'(cs_s1[16]);
    cs_val = ~cs_s2 == 16'h0 ? 16'hFFFF : ~cs_s2;
  end
  assign cs_wr       = state == E_CS_STORE;
  assign txb_wr_en   = dma_wr_en || cs_wr;
`ifdef VNET_BUG_CSUM_OFFSET
  // seeded bug (tests/test_rtl_target.py): the checksum is stored two bytes past csum_start + csum_offset
  assign txb_wr_base = cs_wr ? cs_at + PW'(2) : dma_wr_base;
`else
  assign txb_wr_base = cs_wr ? cs_at : dma_wr_base;
`endif
  assign txb_wr_mask = cs_wr ? W'(2'b11) : dma_wr_mask;
  assign txb_wr_data = cs_wr ? DATA_W'({cs_val[7:0], cs_val[15:8]}) : dma_wr_data;

  logic [15:0] size, mask;
  logic [63:0] drv, dev, dsc;
  assign size      = q_size[cq];
  assign mask      = size - 16'd1;
  assign drv       = q_driver[cq];
  assign dev       = q_device[cq];
  assign dsc       = q_desc[cq];
  assign event_idx = negotiated[F_EVENT_IDX];
  assign packed_ring = negotiated[F_RING_PACKED];
  // the served queue's positions, named once (Icarus 11 cannot part-select a variably indexed element)
  logic [15:0] q_avail, q_used;
  assign q_avail = last_avail[cq];
  assign q_used  = used_idx[cq];

  // packed: the flags of a descriptor just read (split: its flags sit where packed keeps the id)
  logic [15:0] rd_flags;
  assign rd_flags = packed_ring ? small_rdata[127:112] : small_rdata[111:96];

  logic [PW:0] need;  // header + frame
  assign need = rx_len + HDR;

  // A device reset or the device leaving DRIVER_OK ends the service at the next bus transfer
  // boundary (halt). A queue reset is also a stop a vDPA driver uses to read the ring position
  // (GET_VRING_BASE): it ends the service only between chains (abort), so a chain already taken
  // is finished, used element and used idx written, and the vq state block then says exactly
  // where the queue stopped (a frame sent is never counted as not yet taken).
  logic halt, abort;
`ifdef VNET_BUG_STOP_MID_CHAIN
  // seeded bug (tests/test_ring_state.py): a queue reset cuts a chain short, so a frame already sent (or a batch's
  // elements already written) is not counted in the stop position, or the used idx is never written
  assign halt  = dev_reset_req || qreset_req[cq] || !live || !q_enable[cq];
`else
  assign halt  = dev_reset_req || !live || !q_enable[cq];
`endif
  assign abort = halt || qreset_req[cq];
  // the next chain of a batch already under way is taken despite a queue reset only when the request
  // came after the last element's check (the batch's used idx must still be written)
  logic head_abort;
  assign head_abort = batch_n == '0 ? abort : halt;

  // u16 (new - event - 1) < u16 (new - old): the used_event index was crossed (2.7.10)
  function automatic logic need_event(input logic [15:0] ev, input logic [15:0] new_idx, input logic [15:0] old_idx);
    return 16'(new_idx - ev - 16'd1) < 16'(new_idx - old_idx);
  endfunction

  // data command sizes: the part of this descriptor that fits the buffer / the frame
  logic [PW:0] tx_room, rx_left, data_bytes;
  always_comb begin
    tx_room = BUF - stored;
    rx_left = need - written;
    if (is_tx) data_bytes = (33'(d_len) < 33'(tx_room)) ? (PW+1)'(d_len) : tx_room;
    else       data_bytes = (33'(d_len) < 33'(rx_left)) ? (PW+1)'(d_len) : rx_left;
  end

  // packed: the used descriptor of the list in service: bytes written (SPLIT-DEV-16's len) and the flags word
  logic [31:0] used_len;
  logic [15:0] used_flags;
  assign used_len = is_ctrl ? 32'(ack_len) : is_tx ? 32'd0 : 32'(rec_len[ri]);
`ifdef VNET_BUG_PACKED_USED_WRAP
  // seeded bug (tests/test_rtl_target.py): the Device Ring Wrap Counter is never flipped (always 1)
  assign used_flags = packed_used_flags(1'b1, used_len != 32'd0);
`else
  assign used_flags = packed_used_flags(q_used[15], used_len != 32'd0);
`endif

  // DMA command per state
  always_comb begin
    cmd_valid = 1'b0;
    cmd_write = 1'b0;
    cmd_small = 1'b1;
    cmd_addr  = '0;
    cmd_len   = 32'd0;
    cmd_pos   = '0;
    cmd_wdata = '0;
    unique case (state)
      E_AVAIL_ISSUE: begin  // flags and idx in one read; packed: the head's flags word alone
        cmd_valid = !abort; cmd_addr = drv; cmd_len = 32'd4;
        if (packed_ring) begin
          cmd_addr = dsc + 64'd16 * 64'(a_pos[14:0]) + 64'd14;
          cmd_len  = 32'd2;
        end
      end
      E_EVT_ISSUE: begin    // avail_event = last_avail_idx: kick me at the next entry
        cmd_valid = !abort; cmd_write = 1'b1; cmd_len = 32'd2;
        cmd_addr  = dev + 64'd4 + 64'd8 * 64'(size);
        cmd_wdata = 64'(last_avail[cq]);
      end
      E_HEAD_ISSUE: begin
        cmd_valid = !head_abort; cmd_len = 32'd2;
        cmd_addr  = drv + 64'd4 + 64'd2 * 64'(a_pos & mask);
      end
      E_DESC_ISSUE: begin
        cmd_valid = !halt; cmd_len = 32'd16;
        cmd_addr  = dsc + 64'd16 * 64'(cur);
      end
      E_DATA_ISSUE: begin
        cmd_valid = !halt; cmd_small = 1'b0; cmd_write = !is_tx;
        cmd_addr  = d_addr; cmd_len = 32'(xfer);
        cmd_pos   = is_tx ? PW'(stored) : PW'(written);
      end
      E_ACK_ISSUE: begin
        cmd_valid = !halt; cmd_write = 1'b1; cmd_len = 32'd1;
        cmd_addr  = ack_addr; cmd_wdata = 64'(ack_val);
      end
      E_NB_ISSUE: begin     // MRG_RXBUF: num_buffers of the first header, once the frame's chains are known
        cmd_valid = !halt; cmd_write = 1'b1; cmd_len = 32'd1;
        cmd_addr  = nb_addr;
`ifdef VNET_BUG_NUM_BUFFERS
        cmd_wdata = 64'(nrec) - 64'd1;  // seeded bug (tests/test_rtl_target.py): one buffer too few
`else
        cmd_wdata = 64'(nrec);
`endif
      end
      E_ELEM_ISSUE: begin
        cmd_valid = !halt; cmd_write = 1'b1; cmd_len = 32'd8;
        cmd_addr  = dev + 64'd4 + 64'd8 * 64'(16'(used_idx[cq] + batch_n) & mask);
        // SPLIT-DEV-16: the bytes written into the chain
`ifdef VNET_BUG_RX_USED_LEN
        // seeded bug (tests/test_rtl_target.py): a receive chain's used len counts the frame, not the header
        cmd_wdata = {is_ctrl ? 32'(ack_len) : is_tx ? 32'd0 : 32'(rec_len[ri]) - NET_HDR_LEN, 16'd0,
                     is_tx ? head : rec_id[ri]};
`else
        cmd_wdata = {used_len, 16'd0, is_tx ? head : rec_id[ri]};
`endif
        if (packed_ring) begin  // used descriptor: len and id at bytes 8..13 of the list's first slot
          cmd_len   = 32'd6;
          cmd_addr  = dsc + 64'd16 * 64'(q_used[14:0]) + 64'd8;
          cmd_wdata = {16'd0, is_tx ? d_id : rec_id[ri], used_len};
`ifdef VNET_BUG_PACKED_FLAGS_FIRST
          // seeded bug (tests/test_rtl_target.py): the flags word is written first, id and len after it
          cmd_len   = 32'd2;
          cmd_addr  = dsc + 64'd16 * 64'(q_used[14:0]) + 64'd14;
          cmd_wdata = 64'(used_flags);
`endif
        end
`ifdef VNET_BUG_IDX_FIRST
        if (!idx_early) begin  // seeded bug (tests/test_rtl_target.py): used idx first, then the element
          cmd_len   = 32'd2;
          cmd_addr  = dev + 64'd2;
          cmd_wdata = 64'(16'(used_idx[cq] + batch_n + 16'd1));
        end
`endif
      end
      E_UFLAGS_ISSUE: begin  // packed: the flags word hands the used descriptor back, last
        cmd_valid = !halt; cmd_write = 1'b1; cmd_len = 32'd2;
        cmd_addr  = dsc + 64'd16 * 64'(q_used[14:0]) + 64'd14;
        cmd_wdata = 64'(used_flags);
`ifdef VNET_BUG_PACKED_FLAGS_FIRST
        cmd_len   = 32'd6;
        cmd_addr  = dsc + 64'd16 * 64'(q_used[14:0]) + 64'd8;
        cmd_wdata = {16'd0, is_tx ? d_id : rec_id[ri], used_len};
`endif
      end
      E_IDX_ISSUE: begin
        cmd_valid = !halt; cmd_write = 1'b1; cmd_len = 32'd2;
        cmd_addr  = dev + 64'd2;
`ifdef VNET_BUG_USED_WRAP
        cmd_wdata = 64'(15'(used_idx[cq] + batch_n));  // seeded bug (tests/test_rtl_target.py): 15-bit used idx
`else
        cmd_wdata = 64'(16'(used_idx[cq] + batch_n));
`endif
      end
      E_NOTE_ISSUE: begin  // used_event (EVENT_IDX) or avail flags, read after used idx
        cmd_valid = !halt; cmd_len = 32'd2;
        cmd_addr  = event_idx ? drv + 64'd4 + 64'd2 * 64'(size) : drv;
        if (packed_ring) begin  // the driver event suppression structure {desc, flags}
          cmd_addr = drv;
          cmd_len  = 32'd4;
        end
      end
      default: ;
    endcase
  end

  // Every write the engine makes is logged while the dirty page log is on (vnet_dma does it)
`ifdef VNET_BUG_LOG_SKIP_USED
  // seeded bug (tests/rtl/test_rtl.py): used ring writes (split used elements and used idx, packed used
  // descriptors) are not logged, so a migration misses the used ring pages
  assign cmd_nolog = state == E_ELEM_ISSUE || state == E_UFLAGS_ISSUE || state == E_IDX_ISSUE;
`else
  assign cmd_nolog = 1'b0;
`endif

  // the states that wait for the command of the *_ISSUE state before them
  function automatic logic awaits_dma(input estate_e s);
    case (s)
      E_AVAIL_WAIT, E_EVT_WAIT, E_HEAD_WAIT, E_DESC_WAIT, E_DATA_WAIT, E_ACK_WAIT, E_NB_WAIT, E_ELEM_WAIT,
      E_UFLAGS_WAIT, E_IDX_WAIT, E_NOTE_WAIT: return 1'b1;
      default: return 1'b0;
    endcase
  endfunction
  // a *_WAIT state's command finished without a bus error (errors are handled once, after the state machine)
  logic dma_ok;
  assign dma_ok = dma_done && !dma_err;

  // a chain (split) or descriptor list (packed) starts at slot first: nothing walked, read or written yet
  task automatic begin_chain(input logic [15:0] first);
    cur      <= first;
    ndesc    <= '0;
    wr_seen  <= 1'b0;
    bytes_rd <= '0;
    stored   <= '0;
    chain_w0 <= written;  // RX: the frame goes on where the previous chain of it ended (MRG_RXBUF)
    have_ack <= 1'b0;
    ack_len  <= 1'b0;
  endtask

  logic [15:0] sr_u16_0, sr_u16_1;
  assign sr_u16_0 = small_rdata[15:0];
  assign sr_u16_1 = small_rdata[31:16];

  // packed: desc_event_flags of the driver event suppression structure, as the engine honours them
  logic [1:0] ev_flags;
`ifdef VNET_BUG_PACKED_DISABLE_IGNORED
  // seeded bug (tests/test_rtl_target.py): RING_EVENT_FLAGS_DISABLE is read but taken as ENABLE
  assign ev_flags = sr_u16_1[1:0] == RING_EVENT_FLAGS_DISABLE ? RING_EVENT_FLAGS_ENABLE : sr_u16_1[1:0];
`else
  assign ev_flags = sr_u16_1[1:0];
`endif

  always_ff @(posedge clk or negedge rst_n) begin
    if (!rst_n) begin
      is_ctrl <= 1'b0; have_ack <= 1'b0; ack_addr <= '0; ack_val <= '0; ack_len <= 1'b0; active_pairs <= 16'd1;
      tx_pair <= '0; m_axis_tdest <= '0;
      state <= E_IDLE; cq <= '0; is_tx <= 1'b0; pending <= '0; batch_n <= '0; evt_written <= 1'b0;
`ifdef VNET_BUG_IDX_FIRST
      idx_early <= 1'b0;
`endif
      head <= '0; cur <= '0; ndesc <= '0; wr_seen <= 1'b0; d_addr <= '0; d_len <= '0; d_flags <= '0;
      d_next <= '0; d_id <= '0; cur_wrap <= 1'b0; batch_slots <= '0; bytes_rd <= '0; stored <= '0; written <= '0; xfer <= '0;
      last_avail <= '0; used_idx <= '0; kick_pend <= '0; vqs_loaded <= '0; q_enable_q <= '0;
      dev_reset_ack <= 1'b0; qreset_ack <= '0; fail_valid <= 1'b0; fail_code <= ERR_NONE; fail_queue <= '0;
      q_irq_valid <= 1'b0; q_irq_queue <= '0; rx_consume <= 1'b0; tx_go <= 1'b0;
      tx_active <= 1'b0; tx_spos <= '0; tx_end <= '0;
      stat_tx_packets <= '0; stat_tx_dropped <= '0; stat_rx_packets <= '0; stat_rx_no_buffer <= '0;
      stat_rx_dropped <= '0;
      nrec <= '0; g_pos <= '0; chain_w0 <= '0; nb_addr <= '0;
      cs_pos <= '0; cs_par <= '0; cs_at <= '0; cs_acc <= '0;
    end else begin
      dev_reset_ack <= 1'b0;
      qreset_ack    <= '0;
      fail_valid    <= 1'b0;
      q_irq_valid   <= 1'b0;
      rx_consume    <= 1'b0;
      tx_go         <= 1'b0;
      if (rx_in_drop) stat_rx_dropped <= stat_rx_dropped + 32'd1;

      // transmit stream
      if (tx_go) begin
        m_axis_tdest <= tx_pair;
        tx_active <= 1'b1;
        tx_spos   <= HDR;
        tx_end    <= stored;
      end else if (tx_active && m_axis_tready) begin
        tx_spos <= tx_spos + (PW+1)'(W);
        if (m_axis_tlast) tx_active <= 1'b0;
      end

      // doorbells: transmit and control queues wait for them; receive buffers are looked up per frame
      if (kick_valid && (kick_queue[0] || queue_is_ctrl(negotiated, kick_queue))) kick_pend[kick_queue] <= 1'b1;

      // vendor vq state, written while the queue is disabled (vDPA set_vq_state)
      if (vqs_wr_valid) begin
        if (vqs_wr_half[0]) begin
          last_avail[vqs_wr_queue] <= vqs_wr_data[15:0];
          used_idx[vqs_wr_queue]   <= vqs_wr_data[15:0];  // in-order restore: all before it were used
        end
        if (vqs_wr_half[1]) used_idx[vqs_wr_queue] <= vqs_wr_data[31:16];
        vqs_loaded[vqs_wr_queue] <= 1'b1;
      end

      // queue_enable 1: a queue whose state was not written since its reset starts at 0 (RESET-DEV-04);
      // until then a reset queue's indices stay readable in the vendor block (where it stopped)
      q_enable_q <= q_enable;
      for (int unsigned q = 0; q < NUM_QUEUES; q++) begin
        if (q_enable[q] && !q_enable_q[q]) begin
          if (!vqs_loaded[q]) begin  // packed: offset 0, both wrap counters 1
            last_avail[q] <= packed_ring ? PACKED_START : '0;
            used_idx[q]   <= packed_ring ? PACKED_START : '0;
          end
          vqs_loaded[q] <= 1'b0;
        end
      end

      unique case (state)
        E_IDLE: begin
          if (dev_reset_req) begin
            last_avail    <= '0;
            used_idx      <= '0;
            kick_pend     <= '0;
            vqs_loaded    <= '0;
            active_pairs  <= 16'd1;
            rx_consume    <= rx_full;
            dev_reset_ack <= 1'b1;
          end else if (qreset_req != '0) begin
            for (int unsigned q = 0; q < NUM_QUEUES; q++) begin
              if (qreset_req[q]) begin
                // indices kept for the vendor block until the queue is enabled again (see above)
                kick_pend[q]  <= 1'b0;
                vqs_loaded[q] <= 1'b0;
                qreset_ack[q] <= 1'b1;
              end
            end
          end else if (rx_full && !rx_consume) begin : pick_rx
            // receiveq1, or the pair the frame asks for once VQ_PAIRS_SET enabled it; with MQ, when that
            // receive queue is being reset (not enabled), the first enabled one of the active pairs takes the
            // frame (NETCTRL-DEV-27); none enabled: dropped below (NETCTRL-DEV-28)
            logic [QW-1:0] rq;
            logic          moved;
            rq = (negotiated[F_NET_MQ] && 16'(rx_pair) < active_pairs) ? QW'(2 * 32'(rx_pair)) : '0;
            moved = 1'b0;
            if (negotiated[F_NET_MQ] && !q_enable[rq]) begin
              for (int unsigned p = 0; p < NUM_PAIRS; p++) begin
                if (!moved && 16'(p) < active_pairs && q_enable[2 * p]) begin
                  moved = 1'b1;
                  rq    = QW'(2 * p);
                end
              end
            end
            cq      <= rq;
            is_tx   <= 1'b0;
            is_ctrl <= 1'b0;
            written <= '0;
            nrec    <= '0;
            batch_n     <= '0;
            batch_slots <= '0;
            if (live && q_enable[rq]) begin
              state <= E_AVAIL_ISSUE;
            end else begin
              rx_consume      <= 1'b1;
              stat_rx_dropped <= stat_rx_dropped + 32'd1;
            end
          end else begin : pick_tx
            logic found;
            found = 1'b0;
            for (int unsigned q = 0; q < NUM_QUEUES; q++) begin
              if (!found && kick_pend[q]) begin
                found = 1'b1;
                if (live && q_enable[q]) begin
                  cq          <= QW'(q);
                  is_tx       <= 1'b1;
                  is_ctrl     <= queue_is_ctrl(negotiated, QW'(q));
                  tx_pair     <= PAIR_W'(q / 2);
                  evt_written <= 1'b0;
                  batch_n     <= '0;
                  batch_slots <= '0;
                  state       <= E_AVAIL_ISSUE;
                end else begin
                  kick_pend[q] <= 1'b0;  // SPLIT-DEV-22: a kick for a queue that is not running is ignored
                end
              end
            end
          end
        end

        E_AVAIL_ISSUE: if (abort) state <= E_ABORT; else if (cmd_ready) begin
          // a kick arriving from now on may concern entries this read misses: it stays pending
          if (is_tx && !(kick_valid && kick_queue == cq)) kick_pend[cq] <= 1'b0;
          state <= E_AVAIL_WAIT;
        end

        E_AVAIL_WAIT: if (dma_ok) begin
          if (packed_ring) begin
            // PACKED-DEV-06: the head is taken only when its flags say available for the driver wrap counter
            if (packed_is_avail(sr_u16_0, a_pos[15])) begin
              begin_chain(16'(a_pos[14:0]));
              cur_wrap <= a_pos[15];
              state    <= E_DESC_ISSUE;
            end else if (batch_n != '0) begin
              state <= E_NOTE_ISSUE;
            end else begin
              if (!is_tx) begin
                stat_rx_no_buffer <= stat_rx_no_buffer + 32'd1;
                rx_consume        <= 1'b1;
              end
              state <= E_IDLE;
            end
          end else if (16'(sr_u16_1 - last_avail[cq]) > size) begin
            fail_code <= ERR_AVAIL_AHEAD; state <= E_FAIL;  // SPLIT-DRV-11
          end else if (sr_u16_1 == a_pos) begin  // (RX with MRG_RXBUF: no chain for the rest of the frame)
            if (!is_tx) begin
              stat_rx_no_buffer <= stat_rx_no_buffer + 32'd1;  // dropped, as a NIC with an empty ring
              rx_consume        <= 1'b1;
              state             <= E_IDLE;
            end else if (event_idx && !evt_written) begin
              state <= E_EVT_ISSUE;
            end else begin
              state <= E_IDLE;
            end
          end else begin
            pending <= is_tx ? 16'(sr_u16_1 - last_avail[cq]) : 16'd1;
            batch_n <= '0;
            state   <= E_HEAD_ISSUE;
          end
        end

        E_EVT_ISSUE: if (abort) state <= E_ABORT; else if (cmd_ready) state <= E_EVT_WAIT;
        E_EVT_WAIT: if (dma_ok) begin
          // look again: the driver may have added entries after reading the old avail_event
          evt_written <= 1'b1;
          state       <= E_AVAIL_ISSUE;
        end

        E_HEAD_ISSUE: if (head_abort) state <= E_ABORT; else if (cmd_ready) state <= E_HEAD_WAIT;
        E_HEAD_WAIT: if (dma_ok) begin
          head <= sr_u16_0;
          begin_chain(sr_u16_0);
          if (sr_u16_0 >= size) begin
            fail_code <= ERR_HEAD_RANGE; state <= E_FAIL;  // SPLIT-DRV-04
          end else begin
            state <= E_DESC_ISSUE;
          end
        end

        E_DESC_ISSUE: if (halt) state <= E_ABORT;
          else if (ndesc >= 17'(size)) begin
            // more descriptors than the table: a loop (split), a list longer than the ring (PACKED-DRV-07)
            fail_code <= packed_ring ? ERR_P_CHAIN_LEN : ERR_CHAIN_LEN; state <= E_FAIL;
          end else if (cmd_ready) begin
            ndesc <= ndesc + 17'd1;
            state <= E_DESC_WAIT;
          end
        E_DESC_WAIT: if (dma_ok) begin
          d_addr  <= small_rdata[63:0];
          d_len   <= small_rdata[95:64];
          d_flags <= rd_flags;
          d_next  <= small_rdata[127:112];
          d_id    <= small_rdata[111:96];
          if (packed_ring && !packed_is_avail(rd_flags, cur_wrap)) begin
            fail_code <= ERR_NOT_AVAIL; state <= E_FAIL;  // PACKED-DRV-11: the list's slots go available first
          end else if ((rd_flags & DESC_F_INDIRECT) != 16'h0) begin
            // SPLIT-DRV-06, PACKED-DRV-12: not offered
            fail_code <= packed_ring ? ERR_P_INDIRECT : ERR_INDIRECT; state <= E_FAIL;
          end else if ((rd_flags & DESC_F_WRITE) == 16'h0 && wr_seen) begin
            // SPLIT-DRV-02, PACKED-DRV-08
            fail_code <= packed_ring ? ERR_P_RD_AFTER_WR : ERR_RD_AFTER_WR; state <= E_FAIL;
          end else begin
            if ((rd_flags & DESC_F_WRITE) != 16'h0) wr_seen <= 1'b1;
            state <= E_DATA_SIZE;
          end
        end

        // the commands that halt withdraws (see the command table): once taken, the *_WAIT state follows
        E_DATA_ISSUE, E_ACK_ISSUE, E_NB_ISSUE, E_ELEM_ISSUE, E_UFLAGS_ISSUE, E_IDX_ISSUE, E_NOTE_ISSUE:
          if (halt) state <= E_ABORT; else if (cmd_ready) state <= state.next();

        // the readable part of a TX chain goes into the transmit buffer, the writable part of an
        // RX chain receives header + frame; everything else is only walked
        E_DATA_SIZE: begin
          logic readable;
          readable = (d_flags & DESC_F_WRITE) == 16'h0;
          if (is_tx && readable && bytes_rd <= 33'(BUF)) bytes_rd <= bytes_rd + 33'(d_len);  // saturates past BUF
          if (is_ctrl && !readable && !have_ack && d_len != 32'd0) begin
            have_ack <= 1'b1;
            ack_addr <= d_addr;
          end
          xfer  <= (is_tx == readable) ? data_bytes : '0;
          // RX with GUEST_CSUM: the header's flags need the validation's verdict first (wait here)
          if (is_tx == readable && data_bytes != '0) begin
            if (is_tx || !negotiated[F_NET_GUEST_CSUM] || rxv_done) state <= E_DATA_ISSUE;
          end else begin
            state <= E_DATA_NEXT;
          end
        end
        E_DATA_WAIT: if (dma_ok) begin
          if (is_tx) stored <= stored + xfer; else written <= written + xfer;
          // the header's num_buffers (buffer position 10) went to this buffer: MRG_RXBUF may rewrite it
          if (!is_tx && written <= (PW+1)'(10) && written + xfer > (PW+1)'(10)) nb_addr <= d_addr + 64'(10 - written);
          state <= E_DATA_NEXT;
        end
        E_DATA_NEXT: begin
          if ((d_flags & DESC_F_NEXT) == 16'h0) begin
            state <= E_CHAIN_END;
          end else if (packed_ring) begin  // the next slot, the wrap counter flipping at the ring's end
            cur      <= cur + 16'd1 == size ? 16'd0 : cur + 16'd1;
            cur_wrap <= cur + 16'd1 == size ? !cur_wrap : cur_wrap;
            state    <= E_DESC_ISSUE;
`ifndef VNET_BUG_NEXT_UNCHECKED
          end else if (d_next >= size) begin
            fail_code <= ERR_NEXT_RANGE; state <= E_FAIL;  // SPLIT-DRV-04
`endif
          end else begin  // seeded bug VNET_BUG_NEXT_UNCHECKED: next is followed past the descriptor table
            cur   <= d_next;
            state <= E_DESC_ISSUE;
          end
        end

        E_CHAIN_END: begin
          if (!is_tx) begin
            if ((written < need && !mrg) || 32'(nrec) == MRG_MAX) begin
              // NET-DEV-29 without MRG_RXBUF: the chain cannot hold the packet; it (and with MRG_RXBUF every chain
              // gathered for it) stays available
              stat_rx_dropped <= stat_rx_dropped + 32'd1;
              rx_consume      <= 1'b1;
              state           <= E_IDLE;
            end else begin
              rec_id[nrec[MW-1:0]]    <= packed_ring ? d_id : head;
              rec_len[nrec[MW-1:0]]   <= written - chain_w0;
              rec_slots[nrec[MW-1:0]] <= ndesc;
              nrec                    <= nrec + 1'b1;
              if (written < need) begin  // MRG_RXBUF: the rest of the frame goes into the next chain
                g_pos <= packed_ring ? packed_advance(a_pos, ndesc, size) : a_pos + 16'd1;
                state <= E_AVAIL_ISSUE;
              end else begin             // placed: num_buffers when more than one, then the used entries
                batch_n <= '0;
                state   <= nrec != '0 ? E_NB_ISSUE : E_ELEM_ISSUE;
              end
            end
          end else if (is_ctrl) begin : ctrl_command
            // class, command and a 16-bit argument are the first readable bytes (buffer bytes 0..3)
            logic ok;
            ok = bytes_rd >= 33'd4 && bytes_rd <= 33'(BUF) && negotiated[F_NET_MQ]
                 && txb_rd_data[7:0] == VIRTIO_NET_CTRL_MQ && txb_rd_data[15:8] == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
                 && txb_rd_data[31:16] >= 16'd1 && 32'(txb_rd_data[31:16]) <= NUM_PAIRS;
            if (ok && have_ack) active_pairs <= txb_rd_data[31:16];  // a command with no ack slot is not run
            ack_val <= ok ? VIRTIO_NET_OK : VIRTIO_NET_ERR;
            // nothing is written for a chain without a writable byte or a command shorter than class + cmd
            state   <= (have_ack && bytes_rd >= 33'd2 && bytes_rd <= 33'(BUF)) ? E_ACK_ISSUE : E_ELEM_ISSUE;
          end else if (bytes_rd > 33'(HDR) && bytes_rd <= 33'(BUF) && link_up) begin
            if (negotiated[F_NET_CSUM] && (txb_rd_data[7:0] & NET_HDR_F_NEEDS_CSUM) != 8'h0) begin
              state <= E_CS_FIELDS;  // (the read port shows buffer bytes 0.. here: the header's flags)
            end else begin
              tx_go <= 1'b1;
              stat_tx_packets <= stat_tx_packets + 32'd1;
              state <= E_TX_STREAM;
            end
          end else begin
            stat_tx_dropped <= stat_tx_dropped + 32'd1;
            state <= E_ELEM_ISSUE;
          end
        end

        // VIRTIO_NET_F_CSUM: csum_start and csum_offset (buffer bytes 6..9) place the field inside the frame, or
        // the driver erred and the frame is not sent
        E_CS_FIELDS: begin
          if (32'(txb_rd_data[15:0]) >= cs_frame || cs_field + 32'd2 > cs_frame) begin
            stat_tx_dropped <= stat_tx_dropped + 32'd1;
            state           <= E_ELEM_ISSUE;
          end else begin
            cs_par   <= txb_rd_data[0];  // HDR is even
            cs_pos   <= HDR + (PW+1)'(txb_rd_data[15:0]);
            cs_at    <= PW'(HDR) + PW'(cs_field);
            cs_acc   <= '0;
            state    <= E_CS_SUM;
          end
        end
        E_CS_SUM: begin
          cs_acc <= cs_acc + cs_beat;
          cs_pos <= cs_pos + (PW+1)'(W);
          if ((PW+2)'(cs_pos) + (PW+2)'(W) >= (PW+2)'(stored)) state <= E_CS_STORE;
        end
        E_CS_STORE: begin  // cs_val goes into the buffer this cycle (txb_wr_*), the frame streams next
          tx_go           <= 1'b1;
          stat_tx_packets <= stat_tx_packets + 32'd1;
          state           <= E_TX_STREAM;
        end

        E_TX_STREAM: if (!tx_go && !tx_active) state <= E_ELEM_ISSUE;

        E_NB_WAIT: if (dma_ok) state <= E_ELEM_ISSUE;

        E_ACK_WAIT: if (dma_ok) begin
          ack_len <= 1'b1;
          state   <= E_ELEM_ISSUE;
        end

        E_ELEM_WAIT: if (dma_ok) begin
          if (packed_ring) begin
            state <= E_UFLAGS_ISSUE;
`ifdef VNET_BUG_IDX_FIRST
          end else if (!idx_early) begin
            idx_early <= 1'b1;  // the used idx write is done: now the element
            state     <= E_ELEM_ISSUE;
`endif
          end else begin
`ifdef VNET_BUG_IDX_FIRST
            idx_early      <= 1'b0;
`endif
            last_avail[cq] <= last_avail[cq] + 16'd1;
            batch_n        <= batch_n + 16'd1;
            if (!is_tx && 32'(batch_n) + 32'd1 < 32'(nrec)) begin
              state <= E_ELEM_ISSUE;  // the frame's next chain: one used idx update for them all
            end else if (!is_tx) begin
              stat_rx_packets <= stat_rx_packets + 32'd1;
              rx_consume      <= 1'b1;
              state           <= E_IDX_ISSUE;
            end else begin
              state <= (batch_n + 16'd1 < pending && !abort) ? E_HEAD_ISSUE : E_IDX_ISSUE;
            end
          end
        end

        E_UFLAGS_WAIT: if (dma_ok) begin
          // the list's slots are consumed and used; a transmit batch goes on while slots are available
          last_avail[cq] <= packed_advance(last_avail[cq], slots, size);
          used_idx[cq]   <= packed_advance(used_idx[cq], slots, size);
          batch_n        <= batch_n + 16'd1;
          batch_slots    <= batch_slots + slots;
          if (!is_tx && 32'(batch_n) + 32'd1 < 32'(nrec)) begin
            state <= E_ELEM_ISSUE;  // the frame's next list (MRG_RXBUF)
          end else if (!is_tx) begin
            stat_rx_packets <= stat_rx_packets + 32'd1;
            rx_consume      <= 1'b1;
            state           <= E_NOTE_ISSUE;
          end else begin
            state <= (batch_slots + ndesc < 17'(size) && !abort) ? E_AVAIL_ISSUE : E_NOTE_ISSUE;
          end
        end

        E_IDX_WAIT: if (dma_done) begin  // the queue's used idx moves on even when its write failed
`ifdef VNET_BUG_USED_WRAP
          used_idx[cq] <= 16'(15'(used_idx[cq] + batch_n));  // seeded bug: wraps at 0x8000
`else
          used_idx[cq] <= 16'(used_idx[cq] + batch_n);
`endif
          state <= E_NOTE_ISSUE;
        end

        E_NOTE_WAIT: if (dma_ok) begin
          // SPLIT-DEV-09..14; used_idx already holds the new index
          if (packed_ring) begin
            // driver event suppression: DISABLE never, DESC (EVENT_IDX) when the batch covered the event
            // position, ENABLE (and the undefined values) always
            if (ev_flags != RING_EVENT_FLAGS_DISABLE
                && (ev_flags == RING_EVENT_FLAGS_ENABLE || ev_flags != RING_EVENT_FLAGS_DESC || !event_idx
                    || packed_need_event(sr_u16_0, used_idx[cq], batch_slots, size))) begin
              q_irq_valid <= 1'b1;
              q_irq_queue <= cq;
            end
          end else
`ifdef VNET_BUG_MISSED_IRQ
          // seeded bug (tests/test_rtl_target.py): without EVENT_IDX transmit completions never notify
          if (event_idx ? need_event(sr_u16_0, used_idx[cq], 16'(used_idx[cq] - batch_n))
                        : (sr_u16_0 & VRING_AVAIL_F_NO_INTERRUPT) == 16'h0 && !is_tx) begin
`elsif VNET_BUG_NO_INTERRUPT_IGNORED
          // seeded bug (tests/test_rtl_target.py): VRING_AVAIL_F_NO_INTERRUPT is read but not honoured
          if (event_idx ? need_event(sr_u16_0, used_idx[cq], 16'(used_idx[cq] - batch_n)) : 1'b1) begin
`elsif VNET_BUG_USED_EVENT_IGNORED
          // seeded bug (tests/test_rtl_target.py): with EVENT_IDX every used buffer notifies, used_event unread
          if (event_idx ? 1'b1 : (sr_u16_0 & VRING_AVAIL_F_NO_INTERRUPT) == 16'h0) begin
`else
          if (event_idx ? need_event(sr_u16_0, used_idx[cq], 16'(used_idx[cq] - batch_n))
                        : (sr_u16_0 & VRING_AVAIL_F_NO_INTERRUPT) == 16'h0) begin
`endif
            q_irq_valid <= 1'b1;
            q_irq_queue <= cq;
          end
          if (is_tx) kick_pend[cq] <= 1'b1;  // look at the avail ring again before sleeping
          evt_written <= 1'b0;
          state <= E_IDLE;
        end

        E_ABORT: begin
          // a reset (device or queue) or the device leaving DRIVER_OK: a frame in service is dropped
          if (!is_tx && rx_full) begin
            rx_consume      <= 1'b1;
            stat_rx_dropped <= stat_rx_dropped + 32'd1;
          end
`ifdef VNET_BUG_IDX_FIRST
          idx_early <= 1'b0;
`endif
          state <= E_IDLE;
        end

        E_FAIL: begin
          // a driver error: the register block sets DEVICE_NEEDS_RESET; nothing runs until reset
          fail_valid <= 1'b1;
          fail_queue <= cq;
          if (!is_tx && rx_full) rx_consume <= 1'b1;
          state <= E_IDLE;
        end

        default: state <= E_IDLE;
      endcase

      // a bus error (SLVERR/DECERR, an address beyond ADDR_W) on any ring or buffer access: a driver error
      if (dma_done && dma_err && awaits_dma(state)) begin
        fail_code <= ERR_DMA;
        state     <= E_FAIL;
      end
    end
  end

  logic unused;
  assign unused = ^{negotiated, d_flags[15:3]};
endmodule
