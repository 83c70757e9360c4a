//! Summary statistics of benchmark rounds: min, median and max of the samples, and the
//! ratio of our median to the peer's.

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("no samples to summarise")]
    Empty,
    #[error("sample {0} is not a finite number")]
    NotFinite(f64),
}

/// Min, median and max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// Number of samples.
    pub count: usize,
}

impl Summary {
    /// Summarises `samples`; the median of an even count is the mean of the middle two.
    pub fn of(samples: &[f64]) -> Result<Self, Error> {
        if let Some(bad) = samples.iter().find(|s| !s.is_finite()) {
            return Err(Error::NotFinite(*bad));
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (Some(&min), Some(&max)) = (sorted.first(), sorted.last()) else {
            return Err(Error::Empty);
        };
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Ok(Self {
            min,
            median,
            max,
            count: sorted.len(),
        })
    }
}

/// `ours / peer`, or None when the peer's value is not a positive number.
pub fn ratio(ours: f64, peer: f64) -> Option<f64> {
    (peer > 0.0 && peer.is_finite() && ours.is_finite()).then(|| ours / peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_takes_the_middle_sample() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.count), (1.0, 3.0, 5.0, 3));
    }

    #[test]
    fn even_count_averages_the_middle_two() {
        let s = Summary::of(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 10.0));
    }

    #[test]
    fn one_sample_is_min_median_and_max() {
        let s = Summary::of(&[7.5]).unwrap();
        assert_eq!((s.min, s.median, s.max), (7.5, 7.5, 7.5));
    }

    #[test]
    fn empty_and_nan_are_errors() {
        assert_eq!(Summary::of(&[]), Err(Error::Empty));
        assert!(matches!(
            Summary::of(&[1.0, f64::NAN]),
            Err(Error::NotFinite(_))
        ));
    }

    #[test]
    fn ratio_is_ours_over_peer() {
        assert_eq!(ratio(50.0, 200.0), Some(0.25));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(3.0, -1.0), None);
    }
}
