// virtio 1.4 constants shared by the RTL blocks: virtio-pci modern BAR0 layout,
// common configuration offsets (4.1.4.3), device status bits (2.1), feature bits
// (6, 5.1.3) and the split-ring layout (2.7). Values match backend/virtio/*.py.
package virtio_pkg;

  // ---- BAR0 layout (README.md): common 0x0000, ISR 0x1000, device 0x2000, notify 0x3000, ------
  // ---- vendor vq state 0x3800; MSI-X table 0x4000 and PBA 0x5000 belong to the bridge ---------
  localparam logic [31:0] COMMON_CFG_LEN     = 32'h40;
  localparam logic [31:0] NET_CFG_LEN        = 32'hC;   // mac, status, max_virtqueue_pairs, mtu
  localparam logic [31:0] NOTIFY_OFF_MULTIPLIER = 4;

  // ---- struct virtio_pci_common_cfg (4.1.4.3) -------------------------------------------------
  localparam logic [5:0] CC_DEVICE_FEATURE_SELECT = 6'h00;
  localparam logic [5:0] CC_DEVICE_FEATURE        = 6'h04;
  localparam logic [5:0] CC_DRIVER_FEATURE_SELECT = 6'h08;
  localparam logic [5:0] CC_DRIVER_FEATURE        = 6'h0C;
  localparam logic [5:0] CC_MSIX_NUMQ             = 6'h10;  // config_msix_vector | num_queues << 16
  localparam logic [5:0] CC_STATUS_GEN_QSEL       = 6'h14;  // device_status | config_generation << 8 | queue_select << 16
  localparam logic [5:0] CC_QSIZE_QVEC            = 6'h18;  // queue_size | queue_msix_vector << 16
  localparam logic [5:0] CC_QENABLE_QNOFF         = 6'h1C;  // queue_enable | queue_notify_off << 16
  localparam logic [5:0] CC_QUEUE_DESC_LO         = 6'h20;
  localparam logic [5:0] CC_QUEUE_DESC_HI         = 6'h24;
  localparam logic [5:0] CC_QUEUE_DRIVER_LO       = 6'h28;
  localparam logic [5:0] CC_QUEUE_DRIVER_HI       = 6'h2C;
  localparam logic [5:0] CC_QUEUE_DEVICE_LO       = 6'h30;
  localparam logic [5:0] CC_QUEUE_DEVICE_HI       = 6'h34;
  localparam logic [5:0] CC_NOTIFDATA_QRESET      = 6'h38;  // queue_notif_config_data | queue_reset << 16
  localparam logic [5:0] CC_ADMIN_QUEUE           = 6'h3C;  // admin_queue_index | admin_queue_num << 16

  // ---- device_status (2.1) --------------------------------------------------------------------
  localparam logic [7:0] S_DRIVER_OK          = 8'h04;
  localparam logic [7:0] S_FEATURES_OK        = 8'h08;
  localparam logic [7:0] S_DEVICE_NEEDS_RESET = 8'h40;
  localparam logic [7:0] S_FAILED             = 8'h80;

  // ---- feature bits ---------------------------------------------------------------------------
  localparam int F_NET_MTU         = 3;
  localparam int F_NET_MAC         = 5;
  localparam int F_NET_STATUS      = 16;
  localparam int F_NET_CTRL_VQ     = 17;
  localparam int F_NET_MQ          = 22;
  localparam int F_EVENT_IDX       = 29;
  localparam int F_VERSION_1       = 32;
  localparam int F_ACCESS_PLATFORM = 33;
  localparam int F_RING_PACKED     = 34;
  localparam int F_ORDER_PLATFORM  = 36;
  localparam int F_RING_RESET      = 40;

  // ---- ISR status bits, vectors -----------------------------------------------------------------
  localparam logic [1:0]  ISR_QUEUE  = 2'b01;
  localparam logic [1:0]  ISR_CONFIG = 2'b10;
  localparam logic [15:0] NO_VECTOR  = 16'hFFFF;
  localparam logic [15:0] VIRTIO_NET_S_LINK_UP = 16'h0001;

  // ---- split ring (2.7) -------------------------------------------------------------------------
  localparam logic [15:0] DESC_F_NEXT     = 16'h0001;
  localparam logic [15:0] DESC_F_WRITE    = 16'h0002;
  localparam logic [15:0] DESC_F_INDIRECT = 16'h0004;
  localparam logic [15:0] VRING_AVAIL_F_NO_INTERRUPT = 16'h0001;
  localparam logic [31:0] NET_HDR_LEN     = 12;  // struct virtio_net_hdr with num_buffers (VERSION_1)

  // ---- packed ring (2.8) ------------------------------------------------------------------------
  // struct pvirtq_desc: le64 addr, le32 len, le16 id, le16 flags; NEXT/WRITE/INDIRECT as above
  localparam logic [15:0] DESC_F_AVAIL    = 16'h0080;
  localparam logic [15:0] DESC_F_USED     = 16'h8000;
  // desc_event_flags of struct pvirtq_event_suppress (le16 desc {wrap, off[14:0]}, le16 flags)
  localparam logic [1:0]  RING_EVENT_FLAGS_ENABLE  = 2'd0;
  localparam logic [1:0]  RING_EVENT_FLAGS_DISABLE = 2'd1;
  localparam logic [1:0]  RING_EVENT_FLAGS_DESC    = 2'd2;

  // A packed ring position is {wrap counter, offset[14:0]}; both counters start at 1 (2.8.1).
  localparam logic [15:0] PACKED_START = 16'h8000;

  // the descriptor at a position whose flags say "available for this wrap counter": AVAIL == wrap, USED != wrap
  function automatic logic packed_is_avail(input logic [15:0] flags, input logic wrap);
    return (flags & (DESC_F_AVAIL | DESC_F_USED)) == (wrap ? DESC_F_AVAIL : DESC_F_USED);
  endfunction

  // the flags word that marks a descriptor used with the Device Ring Wrap Counter wrap: AVAIL = USED = wrap
  function automatic logic [15:0] packed_used_flags(input logic wrap, input logic written);
    return (wrap ? (DESC_F_AVAIL | DESC_F_USED) : 16'h0) | (written ? DESC_F_WRITE : 16'h0);
  endfunction

  // position pos moved on by n slots (n <= size): the wrap counter flips where the offset passes the end
  function automatic logic [15:0] packed_advance(input logic [15:0] pos, input logic [16:0] n, input logic [15:0] size);
    logic [16:0] off;
    off = 17'(pos[14:0]) + n;
    return off >= 17'(size) ? {~pos[15], 15'(off - 17'(size))} : {pos[15], off[14:0]};
  endfunction

  // RING_EVENT_FLAGS_DESC: the event position lies among the count slots just before new (2.8.10), counted
  // modulo 2 * size (wrap 1 is the first lap) so one lap is never mistaken for none. An event offset outside
  // the ring is the driver's error: notify, which is never wrong.
  function automatic logic packed_need_event(input logic [15:0] ev, input logic [15:0] new_pos, input logic [16:0] count,
                                             input logic [15:0] size);
    logic [17:0] lap, lin_new, lin_ev, d;
    lap     = 18'(size) + 18'(size);
    lin_new = 18'(new_pos[14:0]) + (new_pos[15] ? 18'd0 : 18'(size));
    lin_ev  = 18'(ev[14:0]) + (ev[15] ? 18'd0 : 18'(size));
    d       = lin_new + lap - lin_ev - 18'd1;
    if (d >= lap) d = d - lap;
    return 17'(ev[14:0]) >= 17'(size) || d < 18'(count);
  endfunction

  // ---- control queue (5.1.6.5) ----------------------------------------------------------------
  localparam logic [7:0] VIRTIO_NET_CTRL_MQ              = 8'd4;
  localparam logic [7:0] VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 8'd0;
  localparam logic [7:0] VIRTIO_NET_OK                   = 8'd0;
  localparam logic [7:0] VIRTIO_NET_ERR                  = 8'd1;

  // ---- driver errors the engine reports when it sets DEVICE_NEEDS_RESET ----------------------
  typedef enum logic [3:0] {
    ERR_NONE         = 4'd0,
    ERR_HEAD_RANGE   = 4'd1,  // avail ring names a descriptor >= queue size (SPLIT-DRV-04)
    ERR_NEXT_RANGE   = 4'd2,  // descriptor next >= queue size (SPLIT-DRV-04)
    ERR_CHAIN_LEN    = 4'd3,  // chain longer than the queue size: a loop (SPLIT-DRV-04/08)
    ERR_AVAIL_AHEAD  = 4'd4,  // avail idx more than queue size ahead (SPLIT-DRV-11)
    ERR_RD_AFTER_WR  = 4'd5,  // device-readable descriptor after a device-writable one (SPLIT-DRV-02)
    ERR_INDIRECT     = 4'd6,  // INDIRECT descriptor, VIRTIO_F_INDIRECT_DESC not offered (SPLIT-DRV-06)
    ERR_DMA          = 4'd7,  // AXI SLVERR/DECERR on a ring or buffer access (address not mapped)
    ERR_QUEUE_CONFIG = 4'd8,  // queue_enable with a bad size or misaligned ring (PCI-DRV-17, SPLIT-DRV-01, PACKED-DRV-01)
    ERR_NOT_AVAIL    = 4'd9,  // packed: a descriptor of a list not made available for its wrap counter (PACKED-DRV-11)
    ERR_P_CHAIN_LEN  = 4'd10, // packed: list longer than the queue size (PACKED-DRV-07)
    ERR_P_INDIRECT   = 4'd11, // packed: INDIRECT descriptor, VIRTIO_F_INDIRECT_DESC not offered (PACKED-DRV-12)
    ERR_P_RD_AFTER_WR = 4'd12 // packed: device-readable descriptor after a device-writable one (PACKED-DRV-08)
  } err_e;

endpackage
