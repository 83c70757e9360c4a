//! PNG plots of the report with plotters' bitmap backend: the ratio of every benchmark, and
//! memory per guest and start latency against N. The font is bundled, not looked up.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::report::{DensitySeries, Row};

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct Error {
    path: PathBuf,
    message: String,
}

const FONT: &str = "sans-serif";

/// Picks one curve (memory or start latency) out of a density series.
type Curve = fn(&DensitySeries) -> &[(u32, f64)];

/// Registers the bundled font under the family name the charts use.
fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF shipped in the crate; failure would be a packaging bug.
        let _ = register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT);
    });
}

fn err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |message| Error {
        path: path.into(),
        message,
    }
}

/// `density` counts what fits: more is better; every other figure is a cost.
fn higher_is_better(name: &str) -> bool {
    name == "density"
}

/// Horizontal bars of ours/peer per benchmark that has a ratio, with a line at 1.0.
pub fn ratios(rows: &[Row], path: &Path) -> Result<(), Error> {
    font();
    let bars: Vec<(&str, f64)> = rows
        .iter()
        .filter_map(|r| r.ratio.map(|x| (r.name.as_str(), x)))
        .collect();
    let height = 120 + 46 * bars.len().max(1) as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    draw_ratios(&root, &bars).map_err(|e| err(path)(e.to_string()))?;
    root.present().map_err(|e| err(path)(e.to_string()))
}

fn draw_ratios<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    bars: &[(&str, f64)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let xmax = bars.iter().map(|b| b.1).fold(1.2f64, f64::max) * 1.15;
    let n = bars.len().max(1) as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(
            "ours / peer (median), lower is better except density",
            (FONT, 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0f64..xmax, -0.6f64..n - 0.4)?;
    chart
        .configure_mesh()
        .y_labels(0)
        .disable_y_mesh()
        .x_desc("ratio")
        .label_style((FONT, 15))
        .draw()?;
    for (i, (name, ratio)) in bars.iter().enumerate() {
        let y = n - 1.0 - i as f64;
        let good = if higher_is_better(name) {
            *ratio >= 1.0
        } else {
            *ratio <= 1.0
        };
        let color = if good { GREEN.mix(0.6) } else { RED.mix(0.6) };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y - 0.35), (*ratio, y + 0.35)],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{name}  {ratio:.2}"),
            (0.01 * xmax, y + 0.12),
            (FONT, 16).into_font().color(&BLACK),
        )))?;
    }
    chart.draw_series(LineSeries::new(
        [(1.0, -0.6), (1.0, n - 0.4)],
        BLACK.stroke_width(2),
    ))?;
    Ok(())
}

/// Two panels: host MiB per guest against N, and start latency of the N-th guest.
pub fn density(series: &[DensitySeries], path: &Path) -> Result<(), Error> {
    font();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    draw_density(&root, series).map_err(|e| err(path)(e.to_string()))?;
    root.present().map_err(|e| err(path)(e.to_string()))
}

fn draw_density<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    series: &[DensitySeries],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let pick: [(&str, &str, Curve); 2] = [
        ("host memory per guest", "MiB", |s| &s.mib_per_sandbox),
        ("start latency of the N-th guest", "ms", |s| &s.start_ms),
    ];
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (panel, (title, unit, get)) in panels.iter().zip(pick) {
        let nmax = series
            .iter()
            .flat_map(|s| get(s).iter().map(|p| p.0))
            .max()
            .unwrap_or(1)
            .max(2);
        let ymax = series
            .iter()
            .flat_map(|s| get(s).iter().map(|p| p.1))
            .fold(1.0f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, (FONT, 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(1u32..nmax, 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("N (guests held)")
            .y_desc(unit)
            .label_style((FONT, 15))
            .draw()?;
        for (s, color) in series.iter().zip(colors) {
            let points = get(s).to_vec();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 15))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, ratio: Option<f64>) -> Row {
        let mut r = Row::failed(name, "ms", "peer", &[], String::new());
        r.ratio = ratio;
        r
    }

    /// Count of pixels that are neither white nor the bar colours: text and axes.
    fn dark_pixels(path: &Path) -> usize {
        let img = image::open(path).unwrap().to_rgb8();
        img.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count()
    }

    #[test]
    fn only_density_is_better_higher() {
        assert!(higher_is_better("density"));
        assert!(!higher_is_better("density-mib-per-sandbox"));
        assert!(!higher_is_better("vmm-floor"));
    }

    #[test]
    fn ratio_chart_is_a_png_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("ratios.png");
        ratios(&[row("vmm-floor", Some(0.4)), row("x", None)], &with).unwrap();
        let bytes = std::fs::read(&with).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(dark_pixels(&with) > 500, "no text drawn");
    }

    #[test]
    fn density_chart_draws_both_panels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("density.png");
        let s = DensitySeries {
            label: "ours".into(),
            mib_per_sandbox: vec![(1, 20.0), (2, 18.0), (3, 17.5)],
            start_ms: vec![(1, 900.0), (2, 950.0), (3, 1000.0)],
        };
        density(&[s], &path).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (1200, 500));
        assert!(dark_pixels(&path) > 1000);
    }
}
