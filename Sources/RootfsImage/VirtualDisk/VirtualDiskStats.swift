/// What a virtual disk writer wrote.
public struct VirtualDiskStats: Sendable, Equatable {
    /// The disk's size as guests see it (the input rounded up to whole 512-byte sectors).
    public var virtualSize: UInt64
    /// Zero bytes added to the input to reach `virtualSize`.
    public var paddedBytes: Int64
    public var blockSize: Int
    public var blocks: Int
    /// Blocks stored in the file (a dynamic disk leaves out blocks that are all zeros).
    public var storedBlocks: Int
    public var outputBytes: Int64
}
