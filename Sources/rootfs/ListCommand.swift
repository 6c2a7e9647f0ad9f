import ArgumentParser
import Foundation
import RootfsKit

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the distros that can be built, and where each was found.")

    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print one JSON document.") var json = false

    func run() async throws {
        let dirs = global.distrosDirs
        let json = json
        // --log-file gets the listing (and an error) too.
        let console = global.makeConsole()
        try await CommandRunner.run(console: console) {
            let listing = try await DistroListing.make(catalog: DistroCatalog.standard(distrosDirs: dirs))
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                console.result(String(decoding: try encoder.encode(listing), as: UTF8.self))
            } else {
                console.result(listing.table)
            }
        }
    }
}
