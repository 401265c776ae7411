import ArgumentParser
import Foundation
import KilnMachine
import KilnStore
import KilnSupport

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Images: the reference catalog, your imported disks, and the local managed images and gallery versions builds wrote.",
        subcommands: [ImageListCommand.self, ImageImportCommand.self, ImageRemoveCommand.self]
    )
}

func printTable(_ rows: [[String]]) {
    guard let columns = rows.map(\.count).max() else { return }
    var widths = [Int](repeating: 0, count: columns)
    for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
    for row in rows {
        let cells = row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }
        print(cells.joined(separator: "  "))
    }
}
