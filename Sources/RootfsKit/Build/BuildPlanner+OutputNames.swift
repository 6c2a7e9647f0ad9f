import Foundation

/// How `rootfs build` names its outputs, as mkosi does: `-o/--output FILE` is the build's one
/// `--format` output (its format from --format, else from FILE's extension), `-O/--output-dir DIR`
/// the directory of every output it names itself (DIR/<name>.<ext>). Decided before any work.
extension BuildPlanner {
    /// The formats asked for and, with `-o FILE`, the one output FILE names.
    static func namedOutputs(_ options: BuildOptions) throws -> (formats: [OutputFormat], output: FormatOutput?) {
        guard let file = options.output else { return (options.formats, nil) }
        let oldWay = "rootfs build's -o/--output names one output file; -O/--output-dir DIR writes DIR/<name>.<ext> for each format"
        if options.outputDirectory != nil {
            throw RootfsError("-o \(file) and -O \(options.outputDirectory!) both name where the output goes",
                              hint: "give -o FILE for one output, or -O DIR for a directory of them")
        }
        if options.formats.count > 1 {
            throw RootfsError("-o \(file) names one output file, and \(options.formats.count) formats are asked (\(options.formats.map(\.rawValue).joined(separator: ", ")))",
                              hint: "write them into a directory with -O \(file) (\(oldWay)), or ask for one --format")
        }
        let asDirectory = file.hasSuffix("/") ? String(file.dropLast()) : file
        let directoryHint = "\(oldWay): give -O \(asDirectory), or a file name inside it"
        if options.formats.isEmpty && (file.hasSuffix("/") || FS.isDirectory(file)) {
            // The old `build -o DIR`: say what -o is now rather than guess a format.
            try FS.requireFileOutputName(file, option: "-o", hint: directoryHint)
        }
        let format: OutputFormat
        do {
            format = try OutputFormat.resolve(path: file, explicit: options.formats.first, option: "-o", fallback: nil)
        } catch let error as RootfsError where options.formats.isEmpty {
            throw RootfsError(error.message, hint: "\(error.hint ?? ""); to write the outputs into a directory, give -O \(asDirectory)")
        }
        if ![.rootfs, .oci, .containerDisk].contains(format) {
            try FS.requireFileOutputName(file, option: "-o", hint: directoryHint)
        }
        return ([format], FormatOutput(format: format, path: file))
    }

    /// The disk format of `--image FILE`: what the extension names (.qcow2, .vhd, .vhdx, .vmdk;
    /// raw for .img, .raw or none). Another format's name is refused, not written as a disk.
    static func diskFormat(image: String) throws -> OutputFormat {
        try FS.requireFileOutputName(image, option: "--image")
        let format = try OutputFormat.resolve(path: image, explicit: nil, option: "--image", fallback: .raw)
        let disks: [OutputFormat] = [.raw, .qcow2, .vhd, .vhdx, .vmdk]
        guard disks.contains(format) else {
            throw RootfsError("--image \(image) is a \(format.rawValue) name, and --image writes a disk image (\(disks.map(\.rawValue).joined(separator: ", ")))",
                              hint: "write it with --format \(format.rawValue) -o \(image), or name the disk .img, .qcow2, .vhd, .vhdx or .vmdk")
        }
        return format
    }
}
